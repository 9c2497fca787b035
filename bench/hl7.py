"""HL7 v2 inbound cost: parse + extract + ACK for one message, the work the appservice does
per MLLP frame before routing. 20,000 messages mixing admissions, transfers, discharges,
lab results (with a critical potassium) and orders, in UTF-8 and GB18030. Budget: a
hospital interface engine peaks at a few hundred messages/s, so p99 <= 1 ms is ample.

Run: ``.venv/bin/python -m bench.hl7``.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta, timezone

from bench.stats import percentile
from bridges.hl7 import Hl7Error, ack, extract, parse

COUNT = 20_000
NOW = datetime(2025, 3, 12, 8, 30, tzinfo=timezone(timedelta(hours=8)))
SURNAMES = "王李张刘陈杨赵黄周吴葉"
GIVEN = ("建国", "娜", "伟", "秀英", "志明", "静", "强", "丽")
WARDS = ("5A", "5B", "ICU", "CCU", "7C")


def _msh(kind: str, control: str, charset: str) -> str:
    return (f"MSH|^~\\&|HIS|RENJI|CAREMATRIX|RENJI|20250312083015+0800||{kind}|{control}"
            f"|P|2.4|||AL|NE||{charset}")


def _message(rng: random.Random, n: int) -> bytes:
    charset = rng.choice(("UNICODE UTF-8", "GB 18030-2000"))
    mrn = f"{rng.randrange(10**7):08d}"
    name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"
    pid = f"PID|1||11010119650312{n % 10000:04d}^^^GA^PN~{mrn}^^^RENJI^MR||{name}||19650312|M"
    ward, prior = rng.sample(WARDS, 2)
    pv1 = f"PV1|1|I|{ward}^{rng.randrange(100, 999)}^{rng.randrange(1, 40)}^RENJI|||{prior}^1^1" \
          f"|D{rng.randrange(1000, 9999)}^李^娜||||||||||||V{n:010d}"
    kind = rng.choice(("A01", "A02", "A03", "A08", "ORU", "ORU", "ORM", "OMG"))
    if kind.startswith("A"):
        segments = [_msh(f"ADT^{kind}^ADT_A01", f"M{n}", charset),
                    f"EVN|{kind}|20250312083000+0800", pid, pv1]
    elif kind == "ORU":
        segments = [
            _msh("ORU^R01^ORU_R01", f"M{n}", charset), pid, pv1,
            f"ORC|RE|ORD{n}|LAB{n}||CM",
            f"OBR|1|ORD{n}|LAB{n}|ELEC^电解质^L|||20250312093000+0800|||||||||D2002^张^伟",
            f"OBX|1|NM|2823-3^钾^LN||{rng.choice(('4.1', '6.8', '2.4'))}|mmol/L^^UCUM|3.5-5.3|"
            f"{rng.choice(('N', 'HH', 'LL'))}|||F|||20250312100500+0800",
            "NTE|1||溶血已排除 \\T\\ 已复查\\.br\\已电话通知",
            "OBX|2|NM|2951-2^钠^LN||140|mmol/L^^UCUM|137-147|N|||F|||20250312100500+0800",
        ]
    elif kind == "ORM":
        segments = [_msh("ORM^O01^ORM_O01", f"M{n}", charset), pid, pv1,
                    f"ORC|NW|ORD{n}|||||^^^20250312110000^^S|||||D2002^张^伟",
                    f"OBR|1|ORD{n}||CT-HEAD^头颅CT平扫^L"]
    else:
        segments = [_msh("OMG^O19^OMG_O19", f"M{n}", charset), pid,
                    f"ORC|NW|ORD{n}|||||||20250312120000|||D1001^李^娜",
                    "TQ1|1||||||||R^Routine^HL70485", f"OBR|1|ORD{n}||BLD-CX^血培养^L"]
    text = "\r".join(segments) + "\r"
    return text.encode("gb18030" if charset.startswith("GB") else "utf-8")


def _handle(payload: bytes) -> bytes:
    message = parse(payload)
    try:
        extract(message)
    except Hl7Error as error:
        return ack(message, "AE", error=error, now=NOW)
    return ack(message, "AA", now=NOW)


def measure(count: int = COUNT) -> dict[str, object]:
    rng = random.Random(7)
    payloads = [_message(rng, n) for n in range(count)]
    for payload in payloads[: min(1000, count)]:  # warm-up
        _handle(payload)
    samples_us = []
    started = time.perf_counter()
    for payload in payloads:
        begin = time.perf_counter()
        _handle(payload)
        samples_us.append((time.perf_counter() - begin) * 1e6)
    elapsed = time.perf_counter() - started
    return {
        "messages": count,
        "bytes_mean": round(sum(map(len, payloads)) / count),
        "messages_per_s": round(count / elapsed),
        "p50_us": round(percentile(samples_us, 50), 1),
        "p99_us": round(percentile(samples_us, 99), 1),
        "budget_p99_us": 1000,
    }


def main() -> None:
    print(json.dumps(measure(), indent=2))


if __name__ == "__main__":
    main()
