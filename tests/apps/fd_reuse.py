"""A socket's fd number reused with no close call on it. Usage:
fd_reuse.py PORT exec|dup2|close_range WORKDIR

Makes one HTTP/1.1 request on a keep-alive connection whose socket sits at
fd 100, then ends that socket without a close call on it: `exec`
re-executes this script (the socket is close-on-exec, so the kernel closes
it during the exec), `dup2` puts a file on fd 100 (which closes the
socket), `close_range` closes fds 100..=100 (os.closerange). Either way a
file in WORKDIR then sits at fd 100 and gets an HTTP request written to it
and an HTTP response read from it: bytes of a file, which must never be
taken for the connection's. After `exec` the program's environment names
another service (OTEL_SERVICE_NAME=after-exec). Prints `done` at the end."""
import fcntl
import os
import socket
import sys

FD = 100
REQUEST = b"GET /secret-file HTTP/1.1\r\nHost: file\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def file_at_fd(workdir, replace):
    """A file on fd FD: a request-sized gap then a response, so a write of
    the request and a read after it return the response. `replace`: with
    dup2 (which closes what FD held), else with fcntl(F_DUPFD) (FD is free)."""
    path = os.path.join(workdir, "not-a-socket")
    with open(path, "wb") as f:
        f.write(b"x" * len(REQUEST) + RESPONSE)
    fd = os.open(path, os.O_RDWR)
    if replace:
        os.dup2(fd, FD, inheritable=False)
    else:
        assert fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD) == FD
    os.close(fd)


def use_file():
    os.write(FD, REQUEST)
    got = os.read(FD, 4096)
    assert got == RESPONSE, got
    os.close(FD)
    print("done", flush=True)


def get(conn, path):
    """One request; the response's status line."""
    conn.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += conn.recv(4096)
    head, body = reply.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(4096)
    return head.split(b"\r\n")[0]


def main():
    port, mode, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if mode == "stage2":
        file_at_fd(workdir, replace=False)
        use_file()
        return
    s = socket.create_connection(("127.0.0.1", port))
    os.dup2(s.fileno(), FD, inheritable=False)
    s.close()
    conn = socket.socket(fileno=FD)
    status = get(conn, b"/users/1")
    assert status == b"HTTP/1.1 200 OK", status
    if mode == "exec":
        # `conn` still owns fd 100: no close call before the exec. The new
        # program has a service name of its own; the request was the old one's.
        env = dict(os.environ, OTEL_SERVICE_NAME="after-exec")
        os.execve(sys.executable, [sys.executable, sys.argv[0], str(port), "stage2", workdir], env)
    conn.detach()
    if mode == "close_range":
        os.closerange(FD, FD + 1)
        file_at_fd(workdir, replace=False)
    else:
        file_at_fd(workdir, replace=True)
    use_file()


main()
