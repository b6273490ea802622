/*
 * listen.c - the daemon's socket (server_impl.h): binding the Unix socket at its path
 * (replacing only a stale socket nobody answers on), its mode, unlinking only the file
 * we created, and access control at accept.
 *
 * Access. At accept the peer's uid, gid (SO_PEERCRED) and groups (SO_PEERGROUPS)
 * decide whether it may connect at all (owner_only) and whether it may write; the
 * handler refuses writes of a peer that may not with "forbidden", logged with the uid.
 * Past max_clients, or while shutting down, a new connection is answered busy and
 * closed.
 *
 * Socket activation. Started by systemd with a socket (qdup.socket), the daemon takes
 * that listening socket (sd_listen_fds of libsystemd) instead of binding its own; the
 * socket file is systemd's, so it is neither replaced nor unlinked here.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>
#ifdef QDUP_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "qdup/common.h"
#include "qdup/log.h"
#include "server_impl.h"

static int peer_in_group(int fd, const struct ucred *cr, gid_t gid)
{
    if (cr->gid == gid)
        return 1;
#ifdef SO_PEERGROUPS
    gid_t small[64], *g = small;
    socklen_t len = sizeof small;
    int found = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) != 0) {
        if (errno != ERANGE)
            return 0;
        g = qd_malloc(len);
        if (!g || getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) != 0) {
            qd_free(g);
            return 0;
        }
    }
    for (size_t i = 0; i < len / sizeof *g; i++)
        found |= g[i] == gid;
    if (g != small)
        qd_free(g);
    return found;
#else
    return 0;
#endif
}

/* Reads the peer's credentials and decides what it may do. */
static void peer_identify(qd_server *s, client *c)
{
    uv_os_fd_t fd;
    struct ucred cr;
    socklen_t len = sizeof cr;
    int restricted = s->o.n_write_uids > 0 || s->o.write_group_set;
    c->peer = (qd_peer){.may_write = !restricted};
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        return; /* unknown peer: may read, may not write when writes are restricted */
    c->peer.known = 1;
    c->peer.uid = cr.uid;
    c->peer.gid = cr.gid;
    c->peer.pid = cr.pid;
    int may = !restricted;
    for (size_t i = 0; !may && i < s->o.n_write_uids; i++)
        may = s->write_uids[i] == cr.uid;
    if (!may && s->o.write_group_set)
        may = peer_in_group(fd, &cr, s->o.write_gid);
    c->peer.may_write = may;
}

static void on_connection(uv_stream_t *server, int status)
{
    qd_server *s = server->data;
    if (status < 0) {
        qd_log(QD_LOG_WARN, "accept: %s", uv_strerror(status));
        return;
    }
    client *c = qd_conn_new(s);
    if (!c) {
        qd_log(QD_LOG_WARN, "accept: out of memory");
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        qd_conn_close(c);
        return;
    }
    s->clients_total++;
    c->t_active = qd_now();
    peer_identify(s, c);

    const char *refuse = NULL;
    int code = QD_CODE_BUSY;
    char msg[160];
    if (s->state != S_RUNNING) {
        refuse = "the server is shutting down";
    } else if (s->nclients > s->o.max_clients) {
        snprintf(msg, sizeof msg, "too many clients (at most %zu); try again later",
                 s->o.max_clients);
        refuse = msg;
    } else if (s->o.owner_only && (!c->peer.known || c->peer.uid != s->owner)) {
        snprintf(msg, sizeof msg, "uid %u may not connect: only uid %u may",
                 (unsigned)c->peer.uid, (unsigned)s->owner);
        refuse = msg;
        code = QD_CODE_FORBIDDEN;
    }
    if (refuse) {
        s->clients_refused++;
        c->input_closed = 1;
        slot *sl = qd_conn_slot_new(c);
        if (!sl) {
            qd_conn_close(c);
            return;
        }
        qd_conn_slot_error(sl, code, refuse);
        return;
    }
    qd_conn_process_input(c); /* starts reading */
}

void qd_listen_unlink(qd_server *s)
{
    struct stat st;
    if (s->socket_bound && lstat(s->socket_path, &st) == 0 && st.st_dev == s->sock_dev &&
        st.st_ino == s->sock_ino)
        unlink(s->socket_path);
    s->socket_bound = 0;
}

/* Makes way for binding at path: nothing there is fine; a socket nobody answers on is
 * stale and removed; anything else is an error and is left alone. */
static int clear_socket_path(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return qd_errf(err, errlen, QD_ERR_EXISTS,
                       "%s exists and is not a socket; not replacing it", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (rc == 0)
        return qd_errf(err, errlen, QD_ERR_EXISTS,
                       "another server is listening on %s", path);
    if (e != ECONNREFUSED)
        return qd_errf(err, errlen, QD_ERR_IO, "%s: cannot tell whether it is in use: %s",
                       path, strerror(e));
    if (unlink(path) != 0 && errno != ENOENT)
        return qd_errf(err, errlen, QD_ERR_IO, "cannot remove stale socket %s: %s", path,
                       strerror(errno));
    qd_server_log("removed stale socket %s", path);
    return 0;
}

#ifdef QDUP_HAVE_SYSTEMD
/* Serves on the listening socket systemd passed as fd (socket activation). */
static int take_systemd_socket(qd_server *s, int fd, char *err, size_t errlen)
{
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0)
        return qd_errf(err, errlen, QD_ERR_INVAL,
                       "the socket systemd passed is not a listening Unix stream socket");
    if (sd_is_socket_unix(fd, SOCK_STREAM, 1, s->socket_path, 0) <= 0)
        qd_log(QD_LOG_WARN, "the socket systemd passed is not at %s (--socket); serving "
               "on it anyway", s->socket_path);
    int urc = uv_pipe_open(&s->listener, fd);
    if (urc == 0)
        urc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (urc < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "the socket from systemd: %s", uv_strerror(urc));
    s->socket_bound = 0;
    s->activated = 1;
    return 0;
}
#endif

int qd_listen_bind(qd_server *s, char *err, size_t errlen)
{
    const char *path = s->socket_path;
    struct sockaddr_un sa;
#ifdef QDUP_HAVE_SYSTEMD
    /* 1: unset LISTEN_FDS and LISTEN_PID, which are for this process only. */
    int nfds = sd_listen_fds(1);
    if (nfds < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "sd_listen_fds: %s", strerror(-nfds));
    if (nfds > 1)
        return qd_errf(err, errlen, QD_ERR_INVAL,
                       "systemd passed %d sockets; qdup-daemon listens on one", nfds);
    if (nfds == 1)
        return take_systemd_socket(s, SD_LISTEN_FDS_START, err, errlen);
#endif
    if (strlen(path) >= sizeof sa.sun_path)
        return qd_errf(err, errlen, QD_ERR_INVAL,
                       "socket path %s is %zu bytes; at most %zu fit", path, strlen(path),
                       sizeof sa.sun_path - 1);
    int rc = clear_socket_path(path, err, errlen);
    if (rc)
        return rc;
    /* Created with no more permission than asked for, then set exactly. */
    mode_t old = umask(0777 & ~(mode_t)s->o.socket_mode);
    int urc = uv_pipe_bind(&s->listener, path);
    umask(old);
    if (urc < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "bind %s: %s", path, uv_strerror(urc));
    struct stat st;
    if (chmod(path, (mode_t)s->o.socket_mode) != 0 || lstat(path, &st) != 0) {
        int e = errno;
        unlink(path);
        return qd_errf(err, errlen, QD_ERR_IO, "chmod %s: %s", path, strerror(e));
    }
    s->socket_bound = 1;
    s->sock_dev = st.st_dev;
    s->sock_ino = st.st_ino;
    urc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (urc < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "listen %s: %s", path, uv_strerror(urc));
    return 0;
}
