"""An IMAP server of the tests' own, on loopback, that misbehaves on purpose.

Real Dovecot never lies about a message's size, drips its answers or floods an IDLE; this peer
does, on request. It serves a tiny legitimate mailbox (LOGIN, CAPABILITY, LIST, STATUS,
EXAMINE/SELECT, UID SEARCH, UID FETCH, IDLE, NOOP, LOGOUT) so that a sync gets as far as the
hostile step, then misbehaves as `mode` says:

- "normal": no misbehaviour (the mailbox as given);
- "silent": accepts the connection and never says a word;
- "drip": greets, then answers every command one byte every `drip_seconds`, forever;
- "long_line": answers CAPABILITY with a line of `long_line_bytes` bytes (no line end soon);
- "endless_list": LIST never ends (a new folder line after another, until the client leaves);
- "idle_flood": once in IDLE, sends untagged responses as fast as the client reads them,
  and never completes DONE;
- "status_flood": with `list_status`, a LIST ... RETURN (STATUS ...) sends STATUS responses
  without end after the folder lines;
- any mode: `list_status` advertises LIST-STATUS (RFC 5819) and answers LIST ... RETURN
  (STATUS ...) with a STATUS after each LIST line; `bad_status` replaces the STATUS answers of
  some folders (in LIST-STATUS and in STATUS alike) with the given text;
- any mode: `pile` more literals, each as large as the body, in every body's response;
- any mode: a UID in `huge` is announced with a small RFC822.SIZE (its entry in `huge`) but
  its body is sent as a literal of `huge_literal_bytes` (1 GiB by default), generated as it
  is sent, never held.

`sessions` counts connections; `literal_bytes_sent` how much of huge literals went out;
`floods_ended` how many IDLE floods the client cut by hanging up.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

GIB = 1024**3
CHUNK = b"x" * 65536


def message(subject: str, body: str = "hello", size: int | None = None) -> bytes:
    """A small well-formed message (padded to `size` bytes when given)."""
    head = (
        f"From: Peer <peer@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash(subject))}@peer.test>"
        "\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
    raw = head + body.encode() + b"\r\n"
    if size is not None and size > len(raw):
        raw += (b"y" * 76 + b"\r\n") * ((size - len(raw)) // 78 + 1)
    return raw


@dataclass
class ImapPeer:
    """Start with `with ImapPeer(...) as peer:`; connect to 127.0.0.1:peer.port."""

    folders: dict[str, dict[int, bytes]] = field(default_factory=lambda: {"INBOX": {}})
    mode: str = "normal"
    huge: dict[int, int] = field(default_factory=dict)  # uid: the RFC822.SIZE it claims
    huge_literal_bytes: int = GIB
    drip_seconds: float = 2.0
    long_line_bytes: int = 4 * 1024 * 1024
    uidvalidity: int = 777
    esearch: bool = False  # advertise ESEARCH (RFC 4731) and answer UID SEARCH RETURN with it
    esearch_answer: str | None = None  # the "ALL" set to claim instead of the real one
    pile: int = 0  # extra literals (each as large as the body) in every body's response
    list_status: bool = False  # advertise LIST-STATUS and answer LIST ... RETURN (STATUS ...)
    bad_status: dict[str, str] = field(default_factory=dict)  # folder: its STATUS line's text

    def __post_init__(self) -> None:
        self.sessions = 0
        self.literal_bytes_sent = 0
        self.floods_ended = 0
        self.commands: list[str] = []
        self._lock = threading.Lock()
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with peer._lock:
                    peer.sessions += 1
                try:
                    Session(peer, self.request).run()
                except (OSError, ValueError):
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def pair(self) -> str:
        """What ALLOWED_PRIVATE_HOSTS must name to let the service reach this peer."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ImapPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Session:
    def __init__(self, peer: ImapPeer, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.file = sock.makefile("rb")
        self.selected: str | None = None

    def say(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data + b"\r\n")

    def run(self) -> None:
        peer = self.peer
        if peer.mode == "silent":
            while self.sock.recv(4096):
                pass
            return
        self.say(f"* OK [CAPABILITY {self.capabilities()}] peer ready")
        while True:
            line = self.file.readline(65536)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            tag, _, rest = text.partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            if command == "UID":
                sub, _, args = args.partition(" ")
                command = "UID " + sub.upper()
            with peer._lock:
                peer.commands.append(command)
            if peer.mode == "drip":
                self.drip(f"* OK dripping\r\n{tag} OK done\r\n".encode())
                return
            if not self.answer(tag, command, args):
                return

    def capabilities(self) -> str:
        return (
            "IMAP4rev1 IDLE"
            + (" ESEARCH" if self.peer.esearch else "")
            + (" LIST-EXTENDED LIST-STATUS" if self.peer.list_status else "")
        )

    def drip(self, data: bytes) -> None:
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            time.sleep(self.peer.drip_seconds)

    def answer(self, tag: str, command: str, args: str) -> bool:
        peer = self.peer
        if command == "CAPABILITY":
            if peer.mode == "long_line":
                self.sock.sendall(b"* CAPABILITY IMAP4rev1 " + b"X" * peer.long_line_bytes)
                return False
            self.say(f"* CAPABILITY {self.capabilities()}")
        elif command in ("LOGIN", "NOOP", "ENABLE"):
            pass
        elif command == "LOGOUT":
            self.say("* BYE bye")
            self.say(f"{tag} OK LOGOUT done")
            return False
        elif command == "LIST":
            if peer.mode == "endless_list":
                n = 0
                while True:
                    self.say(f'* LIST () "/" "endless-{n}"')
                    n += 1
            with_status = peer.list_status and "STATUS (" in args.upper()
            if with_status:
                with peer._lock:
                    peer.commands[-1] = "LIST-STATUS"
            for name in peer.folders:
                self.say(f'* LIST () "/" "{name}"')
                if with_status:
                    self.say(self.status_line(name))
            if with_status and peer.mode == "status_flood":
                n = 0
                while True:
                    self.say(f'* STATUS "flood-{n}" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 3)')
                    n += 1
        elif command == "STATUS":
            name = _folder(args)
            if name not in peer.folders:
                self.say(f"{tag} NO no such folder")
                return True
            self.say(self.status_line(name))
        elif command in ("EXAMINE", "SELECT"):
            name = _folder(args)
            mail = peer.folders.get(name)
            if mail is None:
                self.say(f"{tag} NO no such folder")
                return True
            self.selected = name
            self.say(f"* {len(mail)} EXISTS")
            self.say("* FLAGS (\\Seen \\Flagged)")
            self.say(f"* OK [UIDVALIDITY {peer.uidvalidity}] ok")
            self.say(f"* OK [UIDNEXT {max(mail, default=0) + 1}] ok")
            self.say(f"{tag} OK [READ-ONLY] {command} done")
            return True
        elif command == "UID SEARCH":
            self.search(tag, args)
        elif command == "UID FETCH":
            self.fetch(args)
        elif command == "IDLE":
            self.say("+ idling")
            if peer.mode == "idle_flood":
                n = 0
                try:
                    while True:
                        self.say(f"* {n} EXISTS" if n % 2 else "* OK still here, flooding")
                        n += 1
                except OSError:
                    with peer._lock:
                        peer.floods_ended += 1  # the client hung up on the flood
                    raise
            if self.file.readline(65536).strip().upper() != b"DONE":
                return False
        else:
            self.say(f"{tag} BAD unknown command")
            return True
        self.say(f"{tag} OK {command} done")
        return True

    def status_line(self, name: str) -> str:
        peer = self.peer
        if name in peer.bad_status:
            return peer.bad_status[name]
        mail = peer.folders[name]
        return (
            f'* STATUS "{name}" (MESSAGES {len(mail)} UIDNEXT {max(mail, default=0) + 1} '
            f"UIDVALIDITY {peer.uidvalidity})"
        )

    def search(self, tag: str, args: str) -> None:
        """UID SEARCH [RETURN (ALL)] [<message numbers>] [UID <uids>] (what the sync sends)."""
        mail = self.peer.folders.get(self.selected or "", {})
        uids = sorted(mail)
        words = args.split()
        esearch = words[:2] == ["RETURN", "(ALL)"]
        if esearch:
            words = words[2:]
        wanted = set(uids)
        while words:
            word = words.pop(0)
            if word.upper() == "UID" and words:
                wanted &= _uids(words.pop(0), max(uids, default=0))
            elif word[0].isdigit() or word[0] == "*":
                numbers = _uids(word, len(uids))
                wanted &= {uids[n - 1] for n in numbers if 0 < n <= len(uids)}
        found = sorted(wanted)
        if esearch:
            claimed = self.peer.esearch_answer or ",".join(str(u) for u in found)
            self.say(f'* ESEARCH (TAG "{tag}") UID ALL {claimed}' if claimed else "* ESEARCH")
        else:
            self.sock.sendall(("* SEARCH " + " ".join(map(str, found))).encode() + b"\r\n")

    def fetch(self, args: str) -> None:
        peer = self.peer
        mail = peer.folders.get(self.selected or "", {})
        sequence, _, items = args.partition(" ")
        items = items.upper()
        uids = sorted(mail)
        for uid in sorted(_uids(sequence, max(uids, default=0))):
            if uid not in mail:
                continue
            raw = mail[uid]
            seq = uids.index(uid) + 1
            size = peer.huge.get(uid, len(raw))
            head = f"* {seq} FETCH (UID {uid} RFC822.SIZE {size} FLAGS ()"
            head += ' INTERNALDATE "07-Dec-2026 10:00:00 +0000"'
            if "BODY.PEEK[HEADER]" in items:
                header = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                self.sock.sendall(f"{head} BODY[HEADER]<0> {{{len(header)}}}\r\n".encode())
                self.sock.sendall(header + b")\r\n")
            elif "BODY.PEEK[]" in items and uid in peer.huge:
                self.sock.sendall(f"{head} BODY[] {{{peer.huge_literal_bytes}}}\r\n".encode())
                self.stream(peer.huge_literal_bytes)
                self.sock.sendall(b")\r\n")
            elif "BODY.PEEK[]" in items:
                self.sock.sendall(f"{head} BODY[] {{{len(raw)}}}\r\n".encode() + raw)
                for part in range(1, peer.pile + 1):
                    self.sock.sendall(f" BODY[{part}] {{{len(raw)}}}\r\n".encode() + raw)
                self.sock.sendall(b")\r\n")
            else:
                self.say(head + ")")

    def stream(self, total: int) -> None:
        """`total` bytes of a literal, generated as they go (never held)."""
        left = total
        while left > 0:
            chunk = CHUNK[: min(left, len(CHUNK))]
            self.sock.sendall(chunk)
            left -= len(chunk)
            with self.peer._lock:
                self.peer.literal_bytes_sent += len(chunk)


def _folder(args: str) -> str:
    args = args.strip()
    if args.startswith('"'):
        return args[1:].split('"', 1)[0]
    return args.split(" ", 1)[0]


def _uids(sequence: str, highest: int) -> set[int]:
    found: set[int] = set()
    for part in sequence.split(","):
        low, _, high = part.partition(":")
        a = highest if low == "*" else int(low)
        b = a if not high else (highest if high == "*" else int(high))
        found.update(range(min(a, b), max(a, b) + 1))
    return found
