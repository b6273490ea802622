# Install rules and the Debian package (CPack), included by the top CMakeLists.txt.
#
#   cmake --install build --prefix P     programs in P/bin, man pages in P/share/man,
#                                        schema, example config, clients and the default
#                                        model in P/share/qdup, units in P/lib/systemd/system
#   (cd build && cpack -G DEB)           the same under /usr as qdup_VERSION_ARCH.deb; its
#                                        postinst creates the qdup user and /var/lib/qdup
#
# The systemd units and the example config name the installed paths, which are known
# only at install time (--prefix may differ from the configured prefix, and CPack
# installs under /usr), so they are written then by tools/cmake/qdup_dist.cmake. The
# same script installs the default model: models/ is built, not in git, so the model
# is whatever the build tree has (QDUP_MODEL, default models/default.qdm, which
# tools/quickstart.sh trains; the environment variable QDUP_MODEL at install time wins).
include(GNUInstallDirs)

set(QDUP_MODEL "${CMAKE_SOURCE_DIR}/models/default.qdm" CACHE FILEPATH
    "model installed as share/qdup/default.qdm (if it exists at install time)")

install(TARGETS qdup-train qdup-eval qdup-index qdup-daemon qdup qdup-bench qdup-load
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# With QDUP_FAISS=source the programs link the FAISS C API the project builds
# (QdupFaiss.cmake), which no Debian package provides: it goes with them into lib/qdup,
# its AVX2 variant into lib/qdup/glibc-hwcaps/x86-64-v3 (the dynamic loader takes that
# one on CPUs that have AVX2), found through the programs' RUNPATH relative to bin/.
if(QDUP_FAISS STREQUAL "source")
  install(FILES ${QDUP_FAISS_PREFIX}/lib/libfaiss_c.so DESTINATION lib/qdup)
  install(FILES ${QDUP_FAISS_PREFIX}/lib/glibc-hwcaps/x86-64-v3/libfaiss_c.so
          DESTINATION lib/qdup/glibc-hwcaps/x86-64-v3)
  set_target_properties(qdup-train qdup-eval qdup-index qdup-daemon qdup qdup-bench qdup-load
                        PROPERTIES INSTALL_RPATH "$ORIGIN/../lib/qdup")
endif()
install(FILES ${CMAKE_SOURCE_DIR}/schema.sql DESTINATION ${CMAKE_INSTALL_DATADIR}/qdup)
install(FILES ${CMAKE_SOURCE_DIR}/tools/clients/qdup_client.py
              ${CMAKE_SOURCE_DIR}/tools/clients/qdup_client.php
              ${CMAKE_SOURCE_DIR}/tools/clients/qdup_client.rb
              ${CMAKE_SOURCE_DIR}/tools/clients/qdup_client.js
        DESTINATION ${CMAKE_INSTALL_DATADIR}/qdup/clients)
install(FILES ${CMAKE_SOURCE_DIR}/LICENSE ${CMAKE_SOURCE_DIR}/README.md
              ${CMAKE_SOURCE_DIR}/CHANGELOG.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

# Man pages: section 1 made from each program's --help at build time (so that they
# cannot drift from the programs), the protocol page (section 7) written by hand.
set(QDUP_MAN_PAGES
  "qdup-train|train the qdup question encoder||qdup-eval(1), qdup-index(1)"
  "qdup-eval|measure a qdup model's pair and retrieval quality||qdup-train(1)"
  "qdup-index|build and maintain a qdup question index|build,add,remove,search,info,verify,export,compact|qdup-daemon(1), qdup-train(1)"
  "qdup-daemon|serve near-duplicate question queries over a Unix socket||qdup-protocol(7), qdup(1), qdup-index(1), systemctl(1)"
  "qdup|command-line client of qdup-daemon||qdup-daemon(1), qdup-protocol(7)"
  "qdup-bench|measure qdup's encoding, training and search speed|search|qdup-load(1)"
  "qdup-load|load generator for qdup-daemon||qdup-daemon(1), qdup-bench(1)")
set(QDUP_MAN_OUT)
foreach(page ${QDUP_MAN_PAGES})
  string(REPLACE "|" ";" f "${page}")
  list(GET f 0 prog)
  list(GET f 1 summary)
  list(GET f 2 subs)
  list(GET f 3 seealso)
  set(out ${CMAKE_BINARY_DIR}/man/${prog}.1)
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=0
            ${CMAKE_COMMAND} -DPROG=$<TARGET_FILE:${prog}> -DNAME=${prog}
            "-DSUMMARY=${summary}" -DVERSION=${PROJECT_VERSION} "-DSUBCOMMANDS=${subs}"
            "-DSEEALSO=${seealso}" -DOUT=${out} -P ${CMAKE_SOURCE_DIR}/tools/man/help2man.cmake
    DEPENDS ${prog} ${CMAKE_SOURCE_DIR}/tools/man/help2man.cmake
    COMMENT "man page ${prog}.1" VERBATIM)
  list(APPEND QDUP_MAN_OUT ${out})
endforeach()
add_custom_target(qdup-man ALL DEPENDS ${QDUP_MAN_OUT})
install(FILES ${QDUP_MAN_OUT} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${CMAKE_SOURCE_DIR}/tools/man/qdup-protocol.7
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man7)
install(CODE "set(QDUP_SOURCE_DIR \"${CMAKE_SOURCE_DIR}\")
set(QDUP_BINARY_DIR \"${CMAKE_BINARY_DIR}\")
set(QDUP_MODEL \"${QDUP_MODEL}\")")
install(SCRIPT ${CMAKE_SOURCE_DIR}/tools/cmake/qdup_dist.cmake)

# --- the Debian package ---------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME qdup)
set(CPACK_PACKAGE_VENDOR "the qdup authors")
set(CPACK_PACKAGE_CONTACT "qdup maintainers <qdup@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "near-duplicate question finder for forums")
set(CPACK_PACKAGE_DESCRIPTION "qdup finds near-duplicate questions. Its daemon tells a forum \
whether a new post duplicates one already asked, over a Unix socket, from an LSTM \
encoder and a FAISS index. With the indexer, the trainer, the command-line client, \
systemd units and clients for Python, PHP, Ruby and Node.js.")
set(CPACK_RESOURCE_FILE_LICENSE ${CMAKE_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# The runtime libraries' packages, found by dpkg-shlibdeps from what the programs link.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# The private FAISS library above, for dpkg-shlibdeps to resolve (not a dependency).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS usr/lib/qdup)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_SOURCE_DIR}/daemon/dist/debian/postinst
    ${CMAKE_SOURCE_DIR}/daemon/dist/debian/prerm
    ${CMAKE_SOURCE_DIR}/daemon/dist/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
include(CPack)
