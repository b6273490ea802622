# qdup_client.rb - a qdup-daemon client for Ruby 3, standard library only.
#
# Copy this one file into your project and require it. The daemon speaks one JSON
# object per line each way over a Unix socket (see `man qdup-protocol`); the client
# keeps one connection open, sends one request at a time and waits for its reply, with
# a timeout on every step. A reply with "ok": false raises Qdup::Error whose code is
# the daemon's stable code ("not_found", "duplicate_id", "busy", ...); a connection
# that fails or a reply that does not arrive in time raises it with the code
# "connection" or "timeout", and the connection is dropped (the next call reconnects).
#
#   require_relative "qdup_client"
#   qdup = Qdup::Client.new("/run/qdup/qdup.sock")
#   dups = qdup.check("post-42", "How do I learn Python quickly?")["duplicates"]
#   puts "possible duplicate of #{dups[0]["id"]} (#{dups[0]["score"]})" unless dups.empty?
require "json"
require "socket"

module Qdup
  # An error reply of the daemon (code is its "code"), or "connection"/"timeout".
  class Error < StandardError
    attr_reader :code

    def initialize(code, message)
      super("#{code}: #{message}")
      @code = code
    end
  end

  class Client
    def initialize(path = "/run/qdup/qdup.sock", timeout: 10.0)
      @path = path
      @timeout = timeout
      @sock = nil
      @buf = String.new(encoding: Encoding::BINARY)
    end

    def close
      @sock&.close
      @sock = nil
      @buf = String.new(encoding: Encoding::BINARY)
    end

    # Sends one request hash and returns the reply hash (its "ok" is true).
    def request(req)
      line = JSON.generate(req) + "\n"
      begin
        @sock ||= UNIXSocket.new(@path)
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + @timeout
        until line.empty?
          n = @sock.write_nonblock(line, exception: false)
          if n == :wait_writable
            wait(deadline) { IO.select(nil, [@sock], nil, _1) }
          else
            line = line.byteslice(n..)
          end
        end
        until (nl = @buf.index("\n"))
          chunk = @sock.read_nonblock(65536, exception: false)
          if chunk == :wait_readable
            wait(deadline) { IO.select([@sock], nil, nil, _1) }
          elsif chunk.nil?
            raise Errno::ECONNRESET, "the daemon closed the connection"
          else
            @buf << chunk
          end
        end
      rescue SystemCallError, IOError => e
        fail_with("connection", "#{@path}: #{e.message}")
      end
      reply = @buf.slice!(0, nl + 1)
      begin
        obj = JSON.parse(reply.force_encoding(Encoding::UTF_8))
      rescue JSON::ParserError => e
        fail_with("protocol", "reply is not JSON: #{e.message}")
      end
      unless obj["ok"]
        err = obj["error"] || {}
        raise Error.new(err["code"] || "internal", err["message"] || "")
      end
      obj
    end

    # The stored questions most like text: an array of {"id","text","score"}.
    def query(text, k: nil, min_score: nil)
      request(opts({ op: "query", text: text }, k, min_score))["results"]
    end

    # One result list per text, searched in one batch.
    def query_many(texts, k: nil, min_score: nil)
      request(opts({ op: "query", texts: texts.to_a }, k, min_score))["results"]
    end

    # Duplicates of a new post, then stores it unless store is false:
    # {"duplicates" => [...], "stored" => bool, ...}.
    def check(id, text, k: nil, min_score: nil, store: true)
      req = opts({ op: "check", id: id, text: text }, k, min_score)
      req[:store] = false unless store
      request(req)
    end

    # Stores a question; returns its row number.
    def add(id, text)
      request({ op: "add", id: id, text: text })["row"]
    end

    def remove(id)
      request({ op: "remove", id: id })
      nil
    end

    # {"id","text","row","created"}; Qdup::Error "not_found" if there is none.
    def get(id)
      request({ op: "get", id: id })
    end

    def stats
      request({ op: "stats" })["stats"]
    end

    def ping
      request({ op: "ping" })
      nil
    end

    private

    def opts(req, k, min_score)
      req[:k] = k unless k.nil?
      req[:min_score] = min_score unless min_score.nil?
      req
    end

    # Waits for the socket (the block runs IO.select with the time left) or times out.
    def wait(deadline)
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      return if left > 0 && yield(left)

      fail_with("timeout", "no reply from #{@path} within #{@timeout}s")
    end

    def fail_with(code, message)
      close
      raise Error.new(code, message)
    end
  end
end
