"""What a `Link` keeps and does while its stream's slot migrates between Redis Cluster nodes.

A node answers ASK for a command whose key has moved to the node importing the slot (the command
was not run). The link does not move there: Redis lets a client send the refused command to the
importing node after ASKING, and that command only, while the slot's other keys may not have
moved yet (the name fence key, a dead-letter stream), and the importing node, once let in,
serves a key it does not hold yet as missing. The fence script would write its key there, and
the operator's MIGRATE of the real one would then fail with BUSYKEY. So every command still goes
to the slot's node first, and those it refuses go to the importing node, in the order they were
sent, each after its own ASKING (which lets one command in: a packed write holds several). That
costs an extra round trip per refused write until the migration ends; it ends with a MOVED from
either node (`Link._judge`), which the link follows like any other. To send a refused command
again the link must have it: from the first ASK on, it keeps each command it sends until its
reply is read (`Asking.record`, splitting packed writes).
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Deque, Iterable, List, Optional, Sequence, Tuple, Union

import hiredis
import redis.exceptions as rex

Command = Sequence[Any]
# `Link._read_raw`: `count` replies from a connection, error replies in their places.
ReadRaw = Callable[[Any, int], List[Any]]
_ASKING: Command = ("ASKING",)
# The commands that end a transaction MULTI began.
_ENDS = ("EXEC", "DISCARD")


class Asking:
    """The state of one link while its node answers ASK, and how its replies are read then."""

    def __init__(self, follow: Any, source: Tuple[Any, Any], target: Tuple[str, int]) -> None:
        self.follow = follow  # the link's `_Follower`: `asked(host, port)` makes a connection
        self.source = source  # the node the link's own connection goes to, as (host, port)
        self.target = target  # the importing node, as the last ASK named it
        self.conn: Any = None  # the connection to `target`, once a command was sent there
        self.sent: Deque[Command] = collections.deque()  # on the link's connection, unanswered
        # Replies read past the count a `read` asked for: the rest of a transaction, whose
        # commands go to the importing node together or not at all.
        self.ahead: Deque[Any] = collections.deque()

    def drop(self) -> None:
        """The link's connections are lost, and every reply still due on them."""
        if self.conn is not None:
            self.conn.disconnect()
        self.sent.clear()
        self.ahead.clear()

    def record(self, commands: Union[Sequence[Command], bytes]) -> None:
        """The link sent these on its own connection (a packed write is split into commands)."""
        self.sent.extend(_split(commands) if isinstance(commands, bytes) else commands)

    def read(self, own: Any, count: int, read_raw: ReadRaw, ready: Callable[[Any], None]) -> List[Any]:
        """The replies of the next `count` commands sent on `own`, the link's connection: the
        commands its node refused with ASK are sent again to the importing node (`_ask_again`),
        and the replies read there take the refusals' places. A transaction is sent again whole
        if any command in it was refused (the node then aborted it: EXECABORT), so its replies
        are read together. `ready(conn)` prepares the connection to the importing node (the
        link's deadlines, a connect)."""
        replies = [self.ahead.popleft() for _ in range(min(count, len(self.ahead)))]
        due = count - len(replies)
        if not due:
            return replies
        raw = read_raw(own, _through_transactions(self.sent, due))
        commands = [self.sent.popleft() for _ in raw]
        refused: List[int] = []
        block: List[int] = []  # the transaction being read, as positions in `raw`
        queued = False
        for n, command in enumerate(commands):
            target = asked_to(raw[n])
            self.target = target or self.target
            if queued or _name(command) == "MULTI":
                block.append(n)
                queued = _queued_after(command, queued)
                if not queued:
                    if any(asked_to(raw[i]) for i in block):
                        refused += block
                    block = []
            elif target is not None:
                refused.append(n)
        if refused:
            self._ask_again(raw, [commands[n] for n in refused], refused, read_raw, ready)
        self.ahead.extend(raw[due:])
        return replies + raw[:due]

    def _ask_again(self, raw: List[Any], commands: List[Command], places: List[int],
                   read_raw: ReadRaw, ready: Callable[[Any], None]) -> None:
        """Send `commands` to the importing node in one write, in the order they were sent, and
        put each reply in `raw` at its place. ASKING goes before each command: it lets the next
        command in, one only (and is a plain +OK on a node that owns the slot). A transaction
        gets one, before its MULTI: the node keeps it until EXEC, and an ASKING inside would be
        queued and answered in EXEC's reply. The replies to ASKING are read and dropped."""
        conn = self.conn
        if conn is not None and address(conn) != self.target:
            conn.disconnect()
            conn = None
        if conn is None:
            conn = self.conn = self.follow.asked(*self.target)
        ready(conn)
        out: List[Command] = []
        into: List[Optional[int]] = []  # where each reply goes in `raw`; None: dropped
        queued = False
        for place, command in zip(places, commands):
            if not queued:
                out.append(_ASKING)
                into.append(None)
            out.append(command)
            into.append(place)
            queued = _queued_after(command, queued)
        conn.send_packed_command(conn.pack_commands(out), check_health=False)
        for at, reply in zip(into, read_raw(conn, len(out))):
            if at is not None:
                raw[at] = reply


def address(conn: Any) -> Tuple[Any, Any]:
    """Where a connection goes, as (host, port)."""
    return getattr(conn, "host", None), getattr(conn, "port", None)


def asked_to(reply: Any) -> Optional[Tuple[str, int]]:
    """The node an ASK reply sends its command to, as (host, port); None for any other reply
    (redis-py's MovedError is an AskError: a MOVED reply is no ASK)."""
    if isinstance(reply, rex.AskError) and not isinstance(reply, rex.MovedError):
        return reply.host, reply.port
    return None


def _split(payload: bytes) -> List[Command]:
    """The commands packed in `payload` (RESP arrays), each as its list of arguments."""
    reader = hiredis.Reader()
    reader.feed(payload)
    commands: List[Command] = []
    while (command := reader.gets()) is not False:
        commands.append(command)
    return commands


def _name(command: Command) -> str:
    name = command[0]
    return (name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)).upper()


def _queued_after(command: Command, queued: bool) -> bool:
    """Whether the command after `command` is queued in a transaction (after MULTI, to EXEC),
    given whether `command` was."""
    name = _name(command)
    return name == "MULTI" or (queued and name not in _ENDS)


def _through_transactions(commands: Iterable[Command], count: int) -> int:
    """`count`, or more to take in the rest of a transaction that the first `count` of
    `commands` end inside."""
    queued = False
    for n, command in enumerate(commands, 1):
        queued = _queued_after(command, queued)
        if n >= count and not queued:
            return n
    return count
