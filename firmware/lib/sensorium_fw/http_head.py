"""The head of an HTTP/1.1 answer read from a socket: shared by the HTTP link and the
update download (which reads the body itself, into flash). No socket import, so it runs
where the pure modules are tested."""


def read(sock, limit=16384):
    """(status, headers, the body bytes that came with the head) of an HTTP answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(512)
        if not chunk:
            raise OSError("http: connection closed before the headers")
        data += chunk
        if len(data) > limit:
            raise OSError("http: headers too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise OSError("http: bad status line")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest
