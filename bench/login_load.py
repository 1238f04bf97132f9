#!/usr/bin/env python3
"""Password sign-ins against Ponte's browser form (`POST /login`), many at a time.

wrk cannot do this: every connection needs its own CSRF cookie and token, and the
sign-in limits count attempts per client address (100 per 15 minutes) and per email
(10), so each connection binds its own loopback address (127.0.x.y) and moves to a fresh
one before its address's limit, and the logins go round the users given.

Usage: login_load.py URL USERS_FILE LOGINS CONCURRENCY
  USERS_FILE: one "email<TAB>password" a line; a password "-" means a wrong one.
Prints one line: `login_load logins=N seconds=S per_second=R statuses=303:N,401:N,…`.
Exits 1 when a connection fails (a socket error, a malformed response).
"""

import asyncio
import re
import sys
import time
import urllib.parse

PER_ADDRESS = 90  # below LOGIN_PER_IP's 100 per 15 minutes
CSRF_INPUT = re.compile(rb'name="csrf_token" value="([^"]*)"')


class Addresses:
    """127.0.1.10, 127.0.1.11, …: one fresh source address at a time."""

    def __init__(self):
        self.next = 0

    def take(self):
        n = self.next
        self.next += 1
        return f"127.0.{1 + n // 240}.{10 + n % 240}"


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip().lower(), value.strip()))
    length = next((int(v) for n, v in headers if n == "content-length"), None)
    chunked = any(n == "transfer-encoding" and "chunked" in v.lower() for n, v in headers)
    body = b""
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            body += chunk[:-2]
            if size == 0:
                break
    elif length:
        body = await reader.readexactly(length)
    return status, headers, body


class Connection:
    def __init__(self, host, port, address):
        self.host, self.port, self.address = host, port, address
        self.used = 0

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, local_addr=(self.address, 0))
        self.writer.write(f"GET /login HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        status, headers, body = await read_response(self.reader)
        if status != 200:
            raise RuntimeError(f"GET /login answered {status}")
        cookies = [v.split(";", 1)[0] for n, v in headers if n == "set-cookie"]
        self.cookie = "; ".join(c for c in cookies if c.split("=", 1)[0].endswith("ponte_csrf"))
        token = CSRF_INPUT.search(body)
        if not self.cookie or not token:
            raise RuntimeError("no CSRF cookie or token on /login")
        self.csrf = token.group(1).decode()

    async def login(self, email, password):
        form = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": self.csrf}).encode()
        self.writer.write(
            (
                f"POST /login HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nCookie: {self.cookie}\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n"
            ).encode()
            + form
        )
        status, _, _ = await read_response(self.reader)
        self.used += 1
        return status

    def close(self):
        self.writer.close()


async def main():
    url, users_file, logins, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    parsed = urllib.parse.urlsplit(url)
    users = [line.rstrip("\n").split("\t", 1) for line in open(users_file) if line.strip()]
    addresses = Addresses()
    next_login = 0
    statuses = {}

    async def stream():
        nonlocal next_login
        connection = None
        try:
            while next_login < logins:
                n = next_login
                next_login += 1
                if connection is None or connection.used >= PER_ADDRESS:
                    if connection:
                        connection.close()
                    connection = Connection(parsed.hostname, parsed.port, addresses.take())
                    await connection.open()
                email, password = users[n % len(users)]
                status = await connection.login(email, "not the password" if password == "-" else password)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            if connection:
                connection.close()

    started = time.monotonic()
    await asyncio.gather(*(stream() for _ in range(concurrency)))
    seconds = time.monotonic() - started
    done = sum(statuses.values())
    listed = ",".join(f"{s}:{c}" for s, c in sorted(statuses.items()))
    print(f"login_load logins={done} seconds={seconds:.2f} per_second={done / seconds:.1f} statuses={listed}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (OSError, RuntimeError, asyncio.IncompleteReadError, ValueError) as e:
        print(f"login_load: FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
