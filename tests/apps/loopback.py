"""Loopback sockets for the tests that fill kspan's kernel socket map."""
import resource
import socket


def open_pairs(sockets):
    """Opens SOCKETS loopback sockets (sockets // 2 connected pairs) and
    sends a byte over each pair: the kernel's LRU map evicts first what was
    never used after its insert, and a socket is known to kspan's programs
    from its first read or write. Returns the sockets."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (2 * sockets + 256, 2 * sockets + 256))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []
    for _ in range(sockets // 2):
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
        c.sendall(b"x")
        s.recv(1)
        held += [c, s]
    return held
