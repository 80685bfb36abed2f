"""Where the node's event-loop thread spends its time, from a cProfile dump.

    python bench/profile_report.py FILE.prof

Two views: the hot path cut into disjoint groups (cumulative time of the functions that start
each stage, as a share of all profiled time), and the top functions by their own time.
"""

from __future__ import annotations

import pstats
import sys
from typing import Any

# (id, label, [(path suffix, function name), ...], [(path suffix, function name) to subtract])
GROUPS: list[tuple[str, str, list[tuple[str, str]], list[tuple[str, str]]]] = [
    ("recognise", "recognise a common REGISTER or keepalive from its bytes (`sip.fastpath`)",
     [("sip/fastpath.py", "recognise")], []),
    ("fast", "fast-path glue: transaction entry, answer bytes (`fast_transaction`, "
     "`FastRequest.response`, `respond_bytes` without `sendto`)",
     [("sensing_node/transport/sip.py", "fast_transaction"),
      ("sip/fastpath.py", "response"),
      ("sensing_node/transport/sip.py", "respond_bytes")],
     [("sensing_node/transport/sip.py", "_flush")]),
    ("parse", "parse the datagram (`sip.message.parse_message`: split, header checks by regex)",
     [("sip/message.py", "parse_message")], []),
    ("lookup", "transaction lookup (`TransactionLayer.receive`, incl. `server_key` -> `top_via`)",
     [("sip/transaction.py", "receive")], []),
    ("build", "build the response (`Response.for_request`)",
     [("sip/message.py", "for_request")], []),
    ("serialise", "serialise the response (`Message.to_bytes`)",
     [("sip/message.py", "to_bytes")], []),
    ("bookkeeping", "transaction bookkeeping (`TransactionLayer.respond` without `to_bytes`)",
     [("sip/transaction.py", "respond")], [("sip/message.py", "to_bytes")]),
    ("checks", "request checks (`validate_request`, incl. parsing the To of a REGISTER)",
     [("sip/message.py", "validate_request")], []),
    ("policy", "registrar policy (`check_device_id`, allow list, rate limits, Expires, `gb_date`)",
     [("sip/ids.py", "check_device_id"), ("sensing_node/settings/devices.py", "allowed"),
      ("sensing_node/runtime/ratelimit.py", "allow"),
      ("sensing_node/runtime/ratelimit.py", "locked"),
      ("sensing_node/runtime/ratelimit.py", "succeed"),
      ("sensing_node/devices/registrar.py", "requested_expires"),
      ("sensing_node/devices/registrar.py", "gb_date"),
      ("sensing_node/devices/registrar.py", "answer_charset")],
     []),
    ("registry", "registry update (`Registry.register`/`keepalive`, without `_set_online`)",
     [("sensing_node/devices/registry.py", "register"),
      ("sensing_node/devices/registry.py", "keepalive")],
     [("sensing_node/devices/registry.py", "_set_online")]),
    ("sendto", "`sendto` per response (`SipEndpoint._flush`)",
     [("sensing_node/transport/sip.py", "_flush")], []),
    ("from", "From parsed into a `NameAddr` (`Message.from_`, after the parser's check)",
     [("sip/message.py", "from_")], []),
    ("digest", "digest: `parse_digest`, `verify`, nonce `check`/`make`, `build_challenge`",
     [("sip/auth.py", "parse_digest"), ("sip/auth.py", "verify"), ("sip/auth.py", "check"),
      ("sip/auth.py", "make"), ("sip/auth.py", "build_challenge")], []),
    ("manscdp", "MANSCDP body (`parse_manscdp`: keepalive pattern, else the XML parser)",
     [("sip/manscdp.py", "parse_manscdp")], []),
    ("logging", "logging (`Logger.debug` per online/offline change, off at INFO; other lines)",
     [("logging/__init__.py", "info"), ("logging/__init__.py", "debug"),
      ("logging/__init__.py", "warning")], []),
    ("housekeeping", "housekeeping every 0.5 s (`Node._housekeeping`: `gc.freeze`, "
     "`Registry.sweep`, SQLite snapshot)",
     [("sensing_node/node.py", "_housekeeping")], []),
]  # fmt: skip


# Functions whose call counts the report quotes.
COUNTED = ("header_key", "<method 'fullmatch' of 're.Pattern' objects>")


def _match(key: tuple[str, int, str], wanted: tuple[str, str]) -> bool:
    path, _, name = key
    return name == wanted[1] and path.replace("\\", "/").endswith(wanted[0])


def summarize(path: str, top: int = 15) -> dict[str, Any]:
    stats = pstats.Stats(path)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())  # own time of every function

    def cumulative(wanted: tuple[str, str]) -> float:
        return sum(entry[3] for key, entry in raw.items() if _match(key, wanted))

    groups = []
    accounted = 0.0
    for group_id, label, plus, minus in GROUPS:
        seconds = sum(cumulative(w) for w in plus) - sum(cumulative(w) for w in minus)
        if seconds <= 0:
            continue
        accounted += seconds
        groups.append({"id": group_id, "label": label, "seconds": seconds,
                       "share": seconds / total})
    groups.sort(key=lambda g: -g["seconds"])
    rest = max(0.0, total - accounted)
    groups.append({"id": "rest", "label": "everything else (dispatch, registrar glue, counters, "
                   "uvloop)", "seconds": rest, "share": rest / total if total else 0.0})

    own = sorted(raw.items(), key=lambda item: -item[1][2])[:top]
    top_list = []
    for (file, line, name), entry in own:
        short = file
        for marker in ("/work/main/", "/lib/python3"):
            if marker in file:
                short = file.split(marker, 1)[1]
                if marker == "/lib/python3":
                    short = "stdlib " + short.split("/", 1)[1]
                break
        where = f"{short}:{line}" if line else short
        top_list.append({
            "function": f"{name} ({where})" if file != "~" else name,
            "calls": entry[1],
            "own_s": entry[2],
            "share": entry[2] / total if total else 0.0,
        })
    counted: dict[str, int] = {}
    for (_, _, name), entry in raw.items():
        if name in COUNTED:
            counted[name] = counted.get(name, 0) + entry[1]
    return {"total_s": total, "groups": groups, "top": top_list, "calls": counted}


def markdown(summary: dict[str, Any], ops: int | None = None) -> str:
    lines = ["| stage | share | µs per op (profiled) |", "|---|---:|---:|"]
    for g in summary["groups"]:
        per = f"{g['seconds'] / ops * 1e6:.1f}" if ops else ""
        lines.append(f"| {g['label']} | {g['share'] * 100:.1f}% | {per} |")
    lines += ["", "| function (own time) | calls | share |", "|---|---:|---:|"]
    for t in summary["top"]:
        name = t["function"].replace("|", "\\|")
        lines.append(f"| `{name}` | {t['calls']} | {t['share'] * 100:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    for file in sys.argv[1:]:
        print(f"## {file}\n")
        print(markdown(summarize(file)))
        print()
