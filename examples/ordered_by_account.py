"""partition_by: each account's movements applied one at a time, in stream order.

Run it with a Redis server at REDIS_URL; it adds 1,000 deposits and withdrawals over 20 accounts,
applies them on 8 threads (different accounts in parallel, one account never twice at once) and,
after Ctrl-C (or SIGTERM), prints the balances.
"""
import os
import random
import threading
from typing import Dict

import rstream

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

balances: Dict[str, int] = {}
lock = threading.Lock()  # guards the dict itself; the ordering is rstream's


def account_of(message: rstream.Message) -> bytes:
    """The key: messages with the same key are handled one at a time, in id order."""
    return bytes(message.fields[b"account"])


def apply(message: rstream.Message) -> None:
    account = message.fields[b"account"].decode()
    amount = int(message.fields[b"amount"])
    with lock:
        before = balances.get(account, 0)
    # A read-modify-write without a lock per account: no other movement of this account runs
    # meanwhile, and every earlier one has been applied. A failure here is retried before any
    # later movement of this account (other accounts go on).
    with lock:
        balances[account] = before + amount


producer = rstream.Producer(REDIS_URL, "movements")
chance = random.Random(1)
producer.send_many({"account": f"acct-{chance.randrange(20)}",
                    "amount": str(chance.choice([100, -30, 50, -20]))} for _ in range(1000))

consumer = rstream.Consumer(
    redis=REDIS_URL, stream="movements", group="ledger", consumer_name="ledger-1",
    make_stream=True, group_start_id="0", concurrency=8,
    partition_by=account_of, max_attempts=5)
consumer.run(apply)  # until Ctrl-C or SIGTERM
print({account: balances[account] for account in sorted(balances)})
