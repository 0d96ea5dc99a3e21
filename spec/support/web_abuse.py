#!/usr/bin/env python3
"""Clients that misbehave, for spec/web_spec.lua.

web_abuse.py hold PORT N SECONDS     N connections that send half a request, then wait
web_abuse.py noread PORT SECONDS     one connection that asks for /metrics 2000 times and reads nothing
web_abuse.py garbage PORT            a request with a malformed header; prints the answer's status line
web_abuse.py binary PORT             bytes that are not HTTP at all; the same
web_abuse.py big PORT BYTES          a POST with Content-Length BYTES; prints the status line
web_abuse.py chunked PORT BYTES      the same body chunked, without Content-Length
Prints "ready" once the connections are open (hold, noread).
"""
import socket
import sys
import time


def status_line(s):
    s.settimeout(20)
    data = b""
    try:
        while b"\r\n" not in data:
            got = s.recv(4096)
            if not got:
                break
            data += got
    except (socket.timeout, ConnectionError):
        pass
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    return line or "closed"


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "hold":
        n, secs = int(sys.argv[3]), float(sys.argv[4])
        conns = []
        for _ in range(n):
            try:
                c = connect(port)
                c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                conns.append(c)
            except OSError:
                break
        print("ready %d" % len(conns), flush=True)
        time.sleep(secs)
    elif mode == "noread":
        secs = float(sys.argv[3])
        c = connect(port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.setblocking(False)
        req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
        sent = 0
        deadline = time.time() + secs
        print("ready", flush=True)
        while time.time() < deadline:
            try:
                sent += c.send(req[sent:]) if sent < len(req) else 0
            except BlockingIOError:
                pass
            time.sleep(0.05)
    elif mode == "garbage":
        c = connect(port)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon in this header\r\n\r\n")
        print(status_line(c))
    elif mode == "binary":
        c = connect(port)
        c.sendall(b"\x00\x01\x02 NOT HTTP AT ALL\r\n\r\n")
        print(status_line(c))
    elif mode in ("big", "chunked"):
        size = int(sys.argv[3])
        c = connect(port)
        if mode == "big":
            c.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        else:
            c.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        left = size
        try:
            while left > 0:
                n = min(left, len(chunk))
                if mode == "big":
                    c.sendall(chunk[:n])
                else:
                    c.sendall(b"%x\r\n" % n + chunk[:n] + b"\r\n")
                left -= n
            if mode == "chunked":
                c.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        print(status_line(c))


if __name__ == "__main__":
    main()
