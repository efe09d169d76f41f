"""Opens SOCKETS loopback sockets (connected pairs), uses each once, and
exits without closing them: the kernel closes them at exit, with no close
call for kspan's programs to see. Usage: sockets_exit.py SOCKETS"""
import os
import resource
import socket
import sys

sockets = int(sys.argv[1])
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
print(f"opened {len(held)}", flush=True)
os._exit(0)
