"""HL7 v2 inbound adapter: what the ward, the lab alert and the order list receive from a
Chinese hospital's HIS/LIS, and what the sending engine sees in our ACK when we refuse."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from bridges.hl7 import (
    AdtEvent,
    Hl7Error,
    MllpDecoder,
    MllpError,
    OrderEvent,
    ResultEvent,
    Visit,
    ack,
    extract,
    frame,
    parse,
    parse_header,
)
from bridges.hl7.mllp import limit_text

CST = timezone(timedelta(hours=8))
NOW = datetime(2025, 3, 12, 8, 30, 16, tzinfo=CST)


def hl7(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def msh(message_type: str, control_id: str, charset: str = "UNICODE UTF-8",
        version: str = "2.4", app: str = "HIS", facility: str = "RENJI",
        stamp: str = "20250312083015+0800") -> str:
    return (f"MSH|^~\\&|{app}|{facility}|CAREMATRIX|RENJI|{stamp}||{message_type}|{control_id}"
            f"|P|{version}|||AL|NE||{charset}")


PID_WANG = (r"PID|1||110101196503121234^^^GA^PN~00012345^^^RENJI^MR||王^建国||19650312|M|||"
            r"瑞金二路197号^^上海^^200025^CN")

A01 = hl7(
    msh("ADT^A01^ADT_A01", "MSG00001"),
    "EVN|A01|20250312083000+0800",
    PID_WANG,
    "PV1|1|I|5A^501^12^RENJI||||D1001^李^娜|||CAR||||1|||D1001^李^娜|IP|V20250312001",
)
A02 = hl7(
    msh("ADT^A02^ADT_A02", "MSG00002", stamp="20250313141502+0800"),
    "EVN|A02|20250313141500",
    PID_WANG,
    "PV1|1|I|ICU^01^3^RENJI|||5A^501^12^RENJI|D2002^张^伟||||||||||||V20250312001",
)
A03 = hl7(
    msh("ADT^A03^ADT_A03", "MSG00003"),
    "EVN|A03|20250320100000+0800",
    PID_WANG,
    "PV1|1|I|ICU^01^3^RENJI||||D2002^张^伟||||||||||||V20250312001",
)
ORU = hl7(
    msh("ORU^R01^ORU_R01", "LAB000417", version="2.5", app="LIS"),
    "PID|1||00012345^^^RENJI^MR||王^建国||19650312|M",
    "PV1|1|I|ICU^01^3^RENJI||||D2002^张^伟",
    "ORC|RE|ORD7781|LAB55012||CM",
    "OBR|1|ORD7781|LAB55012|ELEC^电解质^L|||20250312093000+0800|||||||||D2002^张^伟",
    "OBX|1|NM|2823-3^钾^LN||6.8|mmol/L^^UCUM|3.5-5.3|HH|||F|||20250312100500+0800",
    "NTE|1||溶血已排除 \\T\\ 已复查\\.br\\已电话通知\\F\\ICU\\F\\",
    "OBX|2|NM|2951-2^钠^LN||140|mmol/L^^UCUM|137-147|N|||F|||20250312100500+0800",
    "OBX|3|ST|COMMENT^备注^L||K\\S\\Na 比值 \\E\\ 见报告||||||F",
)
ORM = hl7(
    msh("ORM^O01^ORM_O01", "ORD000981"),
    "PID|1||00012345^^^RENJI^MR||王^建国||19650312|M",
    "PV1|1|I|ICU^01^3^RENJI||||D2002^张^伟",
    "ORC|NW|ORD7790|||||^^^20250312110000^^S|||||D2002^张^伟",
    "OBR|1|ORD7790||CT-HEAD^头颅CT平扫^L",
)
OMG = hl7(
    msh("OMG^O19^OMG_O19", "ORD000982", version="2.5"),
    "PID|1||00012345^^^RENJI^MR||王^建国||19650312|M",
    "ORC|NW|ORD7801|||||||20250312120000|||D1001^李^娜",
    "TQ1|1||||||||R^Routine^HL70485",
    "OBR|1|ORD7801||BLD-CX^血培养^L",
)


def gb18030(text: str) -> bytes:
    return text.replace("UNICODE UTF-8", "GB 18030-2000").encode("gb18030")


# --- MLLP ---------------------------------------------------------------------------------


def test_mllp_frame_round_trip_and_several_frames_in_one_read():
    one, two = A01.encode(), ORU.encode()
    decoder = MllpDecoder()
    assert frame(one) == b"\x0b" + one + b"\x1c\x0d"
    assert decoder.feed(frame(one) + frame(two)) == [one, two]
    assert decoder.junk == 0 and decoder.pending == 0


def test_mllp_message_split_across_reads_byte_by_byte():
    payload = gb18030(A01)
    decoder = MllpDecoder()
    received: list[bytes] = []
    for i, byte in enumerate(frame(payload)):
        received += decoder.feed(bytes([byte]))
        if i < len(payload):
            assert received == []
    assert received == [payload]


def test_mllp_end_block_split_and_second_frame_starting_in_the_same_read():
    one, two = A02.encode(), A03.encode()
    stream = frame(one) + frame(two)
    cut = len(one) + 2  # between 0x1C and 0x0D
    decoder = MllpDecoder()
    assert decoder.feed(stream[:cut]) == []
    assert decoder.feed(stream[cut:cut + 20]) == [one]
    assert decoder.feed(stream[cut + 20:]) == [two]


def test_mllp_junk_before_between_and_abandoned_frames_is_counted():
    decoder = MllpDecoder()
    messages = decoder.feed(b"GET / HTTP/1.0\r\n" + frame(b"MSH|1") + b"\n\n"
                            + b"\x0bMSH|half" + frame(b"MSH|2"))
    assert messages == [b"MSH|1", b"MSH|2"]
    assert decoder.junk == len(b"GET / HTTP/1.0\r\n") + 2 + len(b"MSH|half")
    assert decoder.feed(b"noise") == [] and decoder.junk == 16 + 2 + 8 + 5


def test_mllp_oversize_frame_comes_out_in_its_place_and_the_next_frame_decodes():
    big = A01.encode() + b"NTE|1||" + b"x" * 500 + b"\r"
    stream = frame(b"MSH|before") + frame(big) + frame(A02.encode())
    decoder = MllpDecoder(max_bytes=400)
    out = decoder.frames(stream)
    assert [f.oversize for f in out] == [False, True, False]
    assert out[0].payload == b"MSH|before" and out[2].payload == A02.encode()
    # Only the first bytes of the oversize frame are kept: its MSH is there, the rest is not.
    assert out[1].size == len(big) and out[1].payload == big[:400]
    assert parse_header(out[1].payload).control_id == "MSG00001"
    assert decoder.junk == 0 and not decoder.in_frame


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 399, 400, 401, 4096])
def test_mllp_oversize_then_normal_frame_split_across_reads(chunk: int):
    big = b"MSH|" + b"y" * 1000
    stream = frame(big) + frame(A03.encode())
    decoder = MllpDecoder(max_bytes=400)
    out = []
    for i in range(0, len(stream), chunk):
        out += decoder.frames(stream[i:i + chunk])
    assert [(f.oversize, f.size) for f in out] == [(True, len(big)), (False, len(A03.encode()))]
    assert out[1].payload == A03.encode()


def test_mllp_frame_exactly_at_the_limit_is_not_oversize_even_with_its_end_block_split():
    payload = b"M" * 100
    decoder = MllpDecoder(max_bytes=100)
    wire = frame(payload)
    assert decoder.frames(wire[:-1]) == []  # everything up to and including 0x1C
    (only,) = decoder.frames(wire[-1:])
    assert not only.oversize and only.payload == payload
    (over,) = MllpDecoder(max_bytes=99).frames(wire)
    assert over.oversize and over.size == 100


def test_mllp_unfinished_frame_is_visible_to_the_listener():
    decoder = MllpDecoder(max_bytes=100)
    assert not decoder.in_frame and decoder.partial == b""
    decoder.frames(b"\x0b")
    assert decoder.in_frame and decoder.pending == 0  # a start block alone already counts
    decoder.frames(b"MSH|half" + b"z" * 200)
    assert decoder.pending == 208 and decoder.partial == (b"MSH|half" + b"z" * 200)[:100]


def test_mllp_ack_reader_refuses_an_oversize_frame_but_keeps_earlier_messages():
    decoder = MllpDecoder(max_bytes=100)
    with pytest.raises(MllpError, match="exceeds the 100 bytes limit") as caught:
        decoder.feed(frame(b"MSH|ok") + frame(b"x" * 101))
    assert caught.value.messages == [b"MSH|ok"]
    assert decoder.feed(frame(b"MSH|next")) == [b"MSH|next"]
    with pytest.raises(MllpError):
        frame(b"MSH|\x1c|")


def test_mllp_limit_is_named_as_people_write_it():
    assert limit_text(1 << 20) == "1 MiB" and limit_text(3 << 20) == "3 MiB"
    assert limit_text(64 << 10) == "64 KiB" and limit_text(1000) == "1000 bytes"


# --- parsing ------------------------------------------------------------------------------


def test_parse_header_accessors_use_hl7_field_numbering():
    message = parse(A01.encode())
    assert message.msh(1) == "|" and message.msh(2) == "^~\\&"
    assert message.message_type == "ADT^A01" and message.trigger == "A01"
    assert message.msh(9, 3) == "ADT_A01"
    assert (message.control_id, message.version, message.charset) == ("MSG00001", "2.4",
                                                                       "UNICODE UTF-8")
    assert (message.sending_app, message.sending_facility) == ("HIS", "RENJI")
    assert message.encoding == "utf-8" and message.raw_text == A01
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "PV1"]


def test_get_addresses_components_repetitions_and_occurrences():
    message = parse(ORU.encode())
    assert message.get("PID", 3, 5) == "MR"
    assert message.get("OBX", 3, 2) == "钾"
    assert message.get("OBX", 3, 2, occurrence=2) == "钠"
    assert message.get("OBX", 5, occurrence=3) == "K^Na 比值 \\ 见报告"
    assert message.get("OBX", 5, occurrence=9) == "" and message.get("ZZZ", 1) == ""
    assert message.get("OBX", 6, 3) == "UCUM" and message.get("OBX", 6, 2) == ""
    assert len(message.all("OBX")) == 3
    wang = parse(A01.encode())
    assert wang.get("PID", 3, 1, repetition=2) == "00012345"
    assert wang.get("PID", 3, 1, repetition=3) == ""


def test_escape_sequences_are_decoded_after_splitting():
    message = parse(ORU.encode())
    assert message.get("NTE", 3) == "溶血已排除 & 已复查\n已电话通知|ICU|"
    hex_name = A01.replace("王^建国", r"\XE78E8B\^建国")
    assert extract(parse(hex_name.encode())).patient.name == "王建国"
    gb_hex = A01.replace("王^建国", r"\XCDF5\^建国")
    assert extract(parse(gb18030(gb_hex))).patient.name == "王建国"
    literal = A01.replace("瑞金二路197号", r"C:\temp\note")
    assert parse(literal.encode()).get("PID", 11) == r"C:\temp\note"


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_line_feed_segment_separators_are_accepted(separator):
    message = parse(A01.replace("\r", separator).encode())
    assert [s.name for s in message.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert extract(message) == extract(parse(A01.encode()))


def test_gb18030_message_reads_like_the_utf8_one():
    utf8, gb = parse(A01.encode()), parse(gb18030(A01))
    assert gb.encoding == "gb18030" and gb.charset == "GB 18030-2000"
    assert extract(gb) == extract(utf8)
    assert gb.get("PID", 11) == "瑞金二路197号"


def test_gb18030_bytes_equal_to_delimiters_do_not_split_fields():
    # 億 is 0x83 0x7C ('|') and 葉 is 0xC8 0x7E ('~') in GB18030: a byte-level split would
    # shift MSH-18 out of place and cut the name into repetitions.
    text = A01.replace("|RENJI|CAREMATRIX", "|億康醫院|CAREMATRIX").replace("王^建国", "葉^志明")
    message = parse(gb18030(text))
    assert message.sending_facility == "億康醫院"
    assert extract(message).patient.name == "葉志明"


def test_latin1_and_default_charset():
    text = A01.replace("UNICODE UTF-8", "8859/1").replace("王^建国", "Müller^Jürgen")
    text = text.replace("瑞金二路197号^^上海", "Hauptstraße 1^^Berlin").replace("李^娜", "Li^Na")
    event = extract(parse(text.encode("latin-1")))
    assert event.patient.name == "Jürgen Müller"
    legacy = A01.replace("UNICODE UTF-8", "").encode("gb18030")
    with pytest.raises(Hl7Error):
        parse(legacy)
    assert extract(parse(legacy, default_charset="GBK")).patient.name == "王建国"


# --- extraction ---------------------------------------------------------------------------


def test_a01_admission_to_ward_5a_bed_12():
    event = extract(parse(A01.encode()))
    assert isinstance(event, AdtEvent) and event.trigger == "A01"
    assert event.patient.id == "00012345"  # the MR repetition, not the ID card number
    assert event.patient.name == "王建国"
    assert (event.patient.sex, event.patient.birth_date) == ("M", date(1965, 3, 12))
    assert event.visit == Visit("5A", "501", "12", "D1001", "V20250312001")
    assert event.event_time == datetime(2025, 3, 12, 8, 30, tzinfo=CST)
    assert event.prior_ward == ""


def test_a02_transfer_from_5a_to_icu_with_naive_event_time():
    event = extract(parse(A02.encode()))
    assert isinstance(event, AdtEvent)
    assert (event.trigger, event.prior_ward, event.visit.ward) == ("A02", "5A", "ICU")
    assert event.visit.attending == "D2002"
    assert event.event_time == datetime(2025, 3, 13, 14, 15)
    assert event.event_time.tzinfo is None


def test_a03_discharge_falls_back_to_msh7_without_evn():
    event = extract(parse(A03.encode()))
    assert isinstance(event, AdtEvent) and event.trigger == "A03"
    assert event.event_time == datetime(2025, 3, 20, 10, 0, tzinfo=CST)
    no_evn = hl7(*(s for s in A03.split("\r") if s and not s.startswith("EVN")))
    assert extract(parse(no_evn.encode())).event_time == datetime(2025, 3, 12, 8, 30, 15,
                                                                   tzinfo=CST)


def test_patient_name_western_order_and_first_pid3_without_mr():
    text = A01.replace("王^建国", "Smith^John^Q").replace(
        "110101196503121234^^^GA^PN~00012345^^^RENJI^MR", "P998877^^^RENJI^PI~X1")
    patient = extract(parse(text.encode())).patient
    assert (patient.name, patient.id) == ("John Q Smith", "P998877")


def test_oru_potassium_6_8_is_critical_sodium_normal():
    event = extract(parse(ORU.encode()))
    assert isinstance(event, ResultEvent)
    assert (event.order_id, event.test, event.ordering_provider) == ("ORD7781", "电解质", "D2002")
    assert event.visit.ward == "ICU"
    assert event.observed_at == datetime(2025, 3, 12, 9, 30, tzinfo=CST)
    potassium, sodium, comment = event.observations
    assert (potassium.code, potassium.text, potassium.value, potassium.units) == (
        "2823-3", "钾", "6.8", "mmol/L")
    assert (potassium.reference_range, potassium.flags, potassium.status) == (
        "3.5-5.3", ("HH",), "F")
    assert potassium.critical and potassium.abnormal
    assert not sodium.critical and not sodium.abnormal and sodium.flags == ("N",)
    assert comment.value == "K^Na 比值 \\ 见报告"
    assert event.critical_observations == (potassium,)


def test_flag_repetitions_and_value_types():
    text = ORU.replace("|HH|||F|||2025", "|H~LL|||F|||2025").replace(
        "OBX|3|ST|COMMENT^备注^L||K\\S\\Na 比值 \\E\\ 见报告||||||F",
        "OBX|3|CWE|HBSAG^乙肝表面抗原^L||POS^阳性^L||阴性|A|||F\r"
        "OBX|4|SN|TNI^肌钙蛋白I^L||<^0.01|ng/mL||N|||F\r"
        "OBX|5|NM|WBC^白细胞^L||||||||X")
    event = extract(parse(text.encode()))
    assert isinstance(event, ResultEvent)
    obs = event.observations
    assert obs[0].flags == ("H", "LL") and obs[0].critical
    assert (obs[2].value, obs[2].abnormal, obs[2].critical) == ("阳性", True, False)
    assert obs[3].value == "<0.01" and not obs[3].abnormal
    assert obs[4].value == "" and obs[4].status == "X"  # cannot be obtained: no value needed
    without_pv1 = extract(parse(hl7(*(s for s in ORU.split("\r") if s and s[:3] != "PV1"))
                                .encode()))
    assert isinstance(without_pv1, ResultEvent) and without_pv1.visit == Visit()


def test_orm_new_order_with_priority_from_orc7():
    event = extract(parse(ORM.encode()))
    assert isinstance(event, OrderEvent)
    assert (event.message_type, event.order_control, event.placer, event.filler) == (
        "ORM^O01", "NW", "ORD7790", "")
    assert (event.test, event.ordering_provider, event.priority) == ("头颅CT平扫", "D2002", "S")
    assert event.patient.name == "王建国" and event.visit.ward == "ICU"
    assert extract(parse(gb18030(ORM))) == event


def test_omg_o19_priority_from_tq1_and_empty_visit():
    event = extract(parse(OMG.encode()))
    assert isinstance(event, OrderEvent)
    assert (event.message_type, event.order_control, event.placer) == ("OMG^O19", "NW", "ORD7801")
    assert (event.test, event.ordering_provider, event.priority) == ("血培养", "D1001", "R")
    assert event.visit == Visit()


# --- refusals -----------------------------------------------------------------------------


def refused(payload: bytes, extracting: bool = False) -> tuple[str, str]:
    with pytest.raises(Hl7Error) as caught:
        message = parse(payload)
        if extracting:
            extract(message)
    return caught.value.code, caught.value.location


@pytest.mark.parametrize(
    ("payload", "code", "location"),
    [
        (b"PID|1||00012345\r", "100", "MSH"),
        (b"", "100", "MSH"),
        (A01.replace("^~\\&", "^~\\", 1).encode(), "102", "MSH-2"),
        (A01.replace("^~\\&", "^^\\&", 1).encode(), "102", "MSH-2"),
        (A01.replace("MSH|^~\\&|", "MSH||", 1).encode(), "101", "MSH-2"),
        (A01.replace("MSH|", "MSHA", 1).encode(), "102", "MSH-1"),
        (A01.replace("|MSG00001|", "||").encode(), "101", "MSH-10"),
        (A01.replace("ADT^A01^ADT_A01", "").encode(), "101", "MSH-9"),
        (A01.encode("gb18030"), "102", "MSH-18"),  # says UTF-8, sends GB18030
        (A01.replace("UNICODE UTF-8", "CNS 11643-1992").encode(), "103", "MSH-18"),
        (A01.replace("王^建国", r"\XE78E\^建国").encode(), "102", "PID-5"),
        (hl7(A01, A02).encode(), "100", "MSH"),
        (A01.replace("\rEVN|", "\revn|").encode(), "100", ""),
    ],
)
def test_malformed_messages_are_refused_with_code_and_location(payload, code, location):
    with pytest.raises(Hl7Error) as caught:
        extract(parse(payload))
    assert (caught.value.code, caught.value.location) == (code, location)


@pytest.mark.parametrize(
    ("text", "code", "location"),
    [
        (A01.replace("ADT^A01^ADT_A01", "ADT^A99^ADT_A01"), "200", "MSH-9"),
        (A01.replace("ADT^A01^ADT_A01", "SIU^S12"), "200", "MSH-9"),
        (A01.replace("110101196503121234^^^GA^PN~00012345^^^RENJI^MR", ""), "101", "PID-3"),
        (A01.replace("5A^501^12^RENJI", "^501^12"), "101", "PV1-3"),
        (hl7(*(s for s in A01.split("\r") if s and s[:3] != "PID")), "100", "PID"),
        (hl7(*(s for s in A01.split("\r") if s and s[:3] != "PV1")), "100", "PV1"),
        (A01.replace("EVN|A01|20250312083000+0800", "EVN|A01|2025-03-12"), "102", "EVN-2"),
        (A01.replace("19650312", "19651332"), "102", "PID-7"),
        (ORU.replace("|2823-3^钾^LN|", "||"), "101", "OBX-3"),
        (ORU.replace("|6.8|", "||"), "101", "OBX-5"),
        (ORU.replace("\rOBR|", "\rZBR|"), "100", "OBR"),
        (ORM.replace("ORC|NW|", "ORC||"), "101", "ORC-1"),
        (OMG.replace("ORC|NW|ORD7801|||||||20250312120000|||D1001^李^娜\r", ""), "100", "ORC"),
    ],
)
def test_unroutable_messages_are_refused_by_extract(text, code, location):
    message = parse(text.encode())
    with pytest.raises(Hl7Error) as caught:
        extract(message)
    assert (caught.value.code, caught.value.location) == (code, location)
    assert location in str(caught.value) or not location


def test_a03_and_a08_do_not_need_a_ward():
    for trigger in ("A03", "A08"):
        text = A01.replace("ADT^A01", f"ADT^{trigger}").replace("5A^501^12^RENJI", "")
        event = extract(parse(text.encode()))
        assert isinstance(event, AdtEvent) and event.visit.ward == ""


# --- acknowledgements ---------------------------------------------------------------------


def test_aa_ack_swaps_apps_and_echoes_control_id_version_and_charset():
    inbound = parse(A01.encode())
    reply = parse(ack(inbound, "AA", sending_facility="RENJI", now=NOW))
    assert reply.message_type == "ACK^A01" and reply.msh(9, 3) == "ACK"
    assert (reply.sending_app, reply.sending_facility) == ("CAREMATRIX", "RENJI")
    assert (reply.receiving_app, reply.receiving_facility) == ("HIS", "RENJI")
    assert reply.control_id and reply.control_id != "MSG00001" and len(reply.control_id) <= 20
    assert (reply.version, reply.charset, reply.processing_id) == ("2.4", "UNICODE UTF-8", "P")
    assert reply.msh(7) == "20250312083016+0800"
    assert (reply.get("MSA", 1), reply.get("MSA", 2)) == ("AA", "MSG00001")
    assert reply.all("ERR") == []
    again = parse(ack(inbound, "AA", now=NOW))
    assert again.control_id != reply.control_id


def test_ae_ack_carries_err_segment_for_the_refusal():
    payload = A01.replace("110101196503121234^^^GA^PN~00012345^^^RENJI^MR", "").encode()
    inbound = parse(payload)
    with pytest.raises(Hl7Error) as caught:
        extract(inbound)
    reply = parse(ack(inbound, "AE", error=caught.value, now=NOW, control_id="ACK1"))
    assert (reply.get("MSA", 1), reply.get("MSA", 2)) == ("AE", "MSG00001")
    assert reply.get("MSA", 3) == caught.value.text
    err = reply.segment("ERR")
    assert err is not None
    assert err.raw(2) == "PID^^3"
    assert (err.get(3, 1), err.get(3, 2), err.get(3, 3)) == ("101", "Required field missing",
                                                             "HL70357")
    assert err.get(4) == "E" and err.get(7) == caught.value.text
    assert err.raw(1) == "PID^^3^101&Required field missing&HL70357"  # v2.4 receivers read ERR-1
    v25 = parse(ack(parse(ORU.encode()), "AE", error=Hl7Error("207", "database down"), now=NOW))
    assert v25.get("ERR", 1) == "" and v25.get("ERR", 2) == "" and v25.get("ERR", 3) == "207"


def test_ar_ack_when_nothing_could_be_parsed():
    raw = ack(None, "AR", "not an HL7 message", error=Hl7Error("100", "no MSH", "MSH"), now=NOW)
    reply = parse(raw)
    assert reply.message_type == "ACK" and reply.version == "2.5" and reply.encoding == "utf-8"
    assert (reply.get("MSA", 1), reply.get("MSA", 2), reply.get("MSA", 3)) == (
        "AR", "", "not an HL7 message")
    assert reply.get("ERR", 2) == "MSH" and reply.get("ERR", 3) == "100"


def test_ar_ack_for_an_undecodable_message_still_echoes_its_control_id():
    payload = A01.encode("gb18030")  # declares UTF-8
    with pytest.raises(Hl7Error) as caught:
        parse(payload)
    header = parse_header(payload)
    assert header is not None and header.control_id == "MSG00001"
    reply = parse(ack(header, "AR", error=caught.value, now=NOW))
    assert reply.get("MSA", 2) == "MSG00001" and reply.get("ERR", 2) == "MSH"
    assert reply.get("ERR", 2, 3) == "18" and reply.get("ERR", 3) == "102"
    assert parse_header(b"garbage") is None


def test_ack_texts_with_delimiters_and_line_breaks_round_trip():
    text = "字段 A|B^C~D\\E&F\r第二行"
    reply = parse(ack(parse(A01.encode()), "AE", text, now=NOW))
    assert reply.get("MSA", 3) == text
    assert len(reply.segments) == 2


def test_gb18030_ack_round_trip():
    inbound = parse(gb18030(A01.replace("|RENJI|CAREMATRIX", "|億康醫院^1.2.156.1^ISO|CAREMATRIX")))
    raw = ack(inbound, "AE", "患者ID缺失，请补充后重发", now=NOW)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    reply = parse(raw)
    assert reply.encoding == "gb18030" and reply.charset == "GB 18030-2000"
    assert reply.get("MSA", 3) == "患者ID缺失，请补充后重发"
    assert reply.receiving_facility == "億康醫院" and reply.msh(6, 2) == "1.2.156.1"
    assert frame(raw)[1:-2] == raw


def test_ack_rejects_unknown_codes():
    with pytest.raises(ValueError):
        ack(None, "CA", now=NOW)  # type: ignore[arg-type]


def test_bench_measure_smoke():
    from bench.hl7 import measure

    result = measure(count=200)
    assert result["messages"] == 200 and result["messages_per_s"] > 0
    assert result["p99_us"] >= result["p50_us"] > 0


def test_byte_order_mark_and_leading_blank_lines_are_ignored():
    for payload in (b"\xef\xbb\xbf" + gb18030(A01), b"\r\n" + A01.encode()):
        assert extract(parse(payload)).patient.name == "王建国"
        assert parse_header(payload) is not None
