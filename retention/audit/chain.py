"""The audit seals' algorithm, and a stand-alone verifier of an exported trail (standard library only).

This file imports nothing but the standard library, so an outside auditor can run it by path on an
export, without Django or database access::

    python retention/audit/chain.py audit.csv seals.jsonl [--key KEY_ID:SECRET ...]

The export is what ``manage.py retention_verify --export DIR`` writes: ``audit.csv`` (the records of
the exported seals, in seal order, with the audit CSV's columns) and ``seals.jsonl`` (one seal per
line). It exits 0 when every seal's records, Merkle root, chain link and signature hold, else 1,
naming the first CSV line or seal that does not. docs/audit-seals.md describes the format.

- A record's canonical form is its cells as the export writes them (the audit CSV's eight columns,
  then policy_id and sweep_run_id; each cell exactly as in the file), encoded as a compact JSON array
  in UTF-8; its leaf hash is SHA-256(0x00 ‖ form), as in RFC 6962.
- A seal's Merkle root is RFC 6962's tree hash over its records' leaves in record-id order
  (interior nodes SHA-256(0x01 ‖ left ‖ right)).
- A seal's hash is SHA-256 over the compact, key-sorted JSON of its fields (``SEAL_FIELDS``), the
  previous seal's hash among them, so the seals form a chain; its signature is
  HMAC-SHA256(key, seal hash as hex text), naming its key by id.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEAL_FIELDS = (
    "seq",
    "first_record_id",
    "last_record_id",
    "record_count",
    "merkle_root",
    "previous_hash",
    "sealed_at",
    "key_id",
)
CSV_COLUMNS = 10  # the audit CSV's eight, then policy_id and sweep_run_id


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def canonical_record(cells: Sequence[str]) -> bytes:
    """A record's CSV cells as the bytes its leaf hashes."""
    return json.dumps(list(cells), ensure_ascii=False, separators=(",", ":")).encode()


def leaf_hash(cells: Sequence[str]) -> bytes:
    return sha256(b"\x00" + canonical_record(cells))


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of leaf hashes."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 audit path of leaf ``index``: the sibling hashes from the leaf up to the root."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_proof(index, leaves[:k]), merkle_root(leaves[k:])]
    return [*inclusion_proof(index - k, leaves[k:]), merkle_root(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: whether ``proof`` shows ``leaf`` at ``index`` in a tree of ``size`` with ``root``."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def seal_hash(fields: dict[str, Any]) -> str:
    """The hex SHA-256 of a seal's fields (``SEAL_FIELDS``), compact JSON with sorted keys."""
    body = {name: fields[name] for name in SEAL_FIELDS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sign(secret: bytes, hash_hex: str) -> str:
    return hmac.new(secret, hash_hex.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Problem:
    """The first thing found wrong: where, and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def check_seal_chain(seals: Sequence[dict[str, Any]], keys: dict[str, bytes], previous: str | None) -> Problem | None:
    """Each seal's hash, its link to the one before, and its signature (when its key is known).

    ``previous``: the hash the first seal must link to (None: take the first seal's link as given).
    """
    for seal in seals:
        where = f"seal {seal['seq']}"
        if seal_hash(seal) != seal["seal_hash"]:
            return Problem(where, "its fields do not match its hash (the seal was changed)")
        if previous is not None and seal["previous_hash"] != previous:
            return Problem(where, "it does not link to the seal before it (a seal was removed, changed or inserted)")
        key = keys.get(seal["key_id"])
        if key is None:
            return Problem(where, f"no key {seal['key_id']!r} to check its signature")
        if not hmac.compare_digest(sign(key, seal["seal_hash"]), seal["signature"]):
            return Problem(where, "its signature does not verify")
        previous = seal["seal_hash"]
    return None


def compare_leaves(expected: Sequence[bytes], found: Sequence[bytes], labels: Sequence[str]) -> str | None:
    """Where the records found differ from the leaves a seal stored: the first change, removal or insertion."""
    for i in range(max(len(expected), len(found))):
        if i < len(expected) and i < len(found) and expected[i] == found[i]:
            continue
        if i >= len(found):
            return f"record #{i + 1} of the seal is missing (removed)"
        if i >= len(expected) or expected[i] in found[i + 1 : i + 2]:
            return f"{labels[i]} is not in the seal (inserted afterwards)"
        if found[i] in expected[i + 1 : i + 2]:
            return f"the seal's record #{i + 1} is missing before {labels[i]} (removed)"
        return f"{labels[i]} differs from what was sealed (changed)"
    return None


def check_export(
    rows: Iterable[list[str]], seals: Sequence[dict[str, Any]], keys: dict[str, bytes], *, after: str = ""
) -> Problem | None:
    """An exported trail: CSV rows (header first) against its seals, in order.

    ``after``: the hash of the seal before the first exported one ("" when the export starts at seal 1).
    """
    if not seals:
        return Problem("seals.jsonl", "no seal")
    if not after and seals[0]["seq"] != 1:
        return Problem(
            f"seal {seals[0]['seq']}",
            "the export does not start at seal 1: give --after with the hash of the seal before it",
        )
    problem = check_seal_chain(seals, keys, previous=after)
    if problem:
        return problem
    lines = iter(enumerate(rows, start=1))
    header = next(lines, None)
    if header is None or len(header[1]) != CSV_COLUMNS:
        return Problem("audit.csv line 1", "not the audit CSV's header")
    pending = list(lines)
    at = 0
    for seal in seals:
        stored = [bytes.fromhex(h) for h in seal["leaves"]]
        if merkle_root(stored).hex() != seal["merkle_root"] or len(stored) != seal["record_count"]:
            return Problem(f"seal {seal['seq']}", "its leaves do not match its Merkle root")
        mine = pending[at : at + len(stored)]
        found = [leaf_hash(cells) for _, cells in mine]
        labels = [f"audit.csv line {n}" for n, _ in mine]
        difference = compare_leaves(stored, found, labels)
        if difference:
            return Problem(f"seal {seal['seq']}", difference)
        at += len(stored)
    if at < len(pending):
        return Problem(f"audit.csv line {pending[at][0]}", "a record no exported seal covers (inserted afterwards)")
    return None


def parse_keys(specs: Iterable[str]) -> dict[str, bytes]:
    """``KEY_ID:SECRET`` strings → {key id: secret bytes}."""
    keys = {}
    for spec in specs:
        key_id, sep, secret = spec.partition(":")
        if not sep or not key_id or not secret:
            raise ValueError(f"a key must be KEY_ID:SECRET, got {spec!r}")
        keys[key_id] = secret.encode()
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check an exported audit trail against its seals.")
    parser.add_argument("csv", type=Path, help="audit.csv from retention_verify --export")
    parser.add_argument("seals", type=Path, help="seals.jsonl from retention_verify --export")
    parser.add_argument("--key", action="append", default=[], help="KEY_ID:SECRET of a signing key (repeatable)")
    parser.add_argument("--after", default="", help="The hash of the seal before the first one exported, if not 1")
    args = parser.parse_args(argv)
    try:
        keys = parse_keys(args.key)
    except ValueError as exc:
        parser.error(str(exc))
    seals = [json.loads(line) for line in args.seals.read_text(encoding="utf-8").splitlines() if line.strip()]
    with args.csv.open(newline="", encoding="utf-8") as f:
        problem = check_export(csv.reader(f), seals, keys, after=args.after)
    if problem:
        print(f"FAILED: {problem}")
        return 1
    records = sum(seal["record_count"] for seal in seals)
    print(f"OK: {len(seals)} seals, {records} records, chain and signatures verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
