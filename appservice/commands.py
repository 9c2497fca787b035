"""Bot commands as pure functions: text in, reply text out (parsing: carematrix.commands).

Replies are Chinese first with the English sentence beside it, as staff read the product;
each line of the help starts with its command, so the list stays easy to scan."""

from __future__ import annotations

HELP = (
    "机器人指令 CareMatrix bot commands:\n"
    "!ping — 检查 CareMatrix 服务是否在应答 check that the CareMatrix service is answering\n"
    "!help — 本列表 this list\n"
    "!oncall [unit] — 各值班角色当前由谁担任、下一班是谁 who holds each on-duty role now, and who is next\n"
    "!oncall cover <role> until HH:MM [staff number] — 顶班（或交班）至该时间 "
    "take over (or hand over) a role until then\n"
    "!oncall swap <role> <staff number> — 用您下一个该角色班次与对方的交换 "
    "trade your next shift of a role for theirs\n"
    "!call <role or person> — 与当前担任该角色的人（如 !call icu/doctor）或该员工（工号）通话："
    "打开你们两人的私聊并呼叫对方，然后在私聊中按通话按钮 "
    "a call with whoever holds the role now (e.g. !call icu/doctor) or that "
    "person (staff number): opens your two-person chat with them and rings them; press the call button there\n"
    "!ack <alert id> — 确认该编号的呼叫（呼叫通知中方括号内的编号） "
    "acknowledge the page with that ID (the code in brackets on the page)\n"
    "!quiet on|off — 下班期间静音工作通知（危急警报仍会响铃） "
    "silence work notifications while you are off duty (critical alerts still ring)\n"
    "!case open <patient id> [unit ...] — 为患者开立会诊（MDT）房间，邀请病区和所列科室的值班角色，附患者摘要 "
    "open a patient case (MDT) room with the ward's and those "
    "units' on-duty roles and the patient's summary\n"
    "!images <accession number or study UID> — 把该检查的关键图像发到本会诊房间 "
    "post the study's key images into this case room\n"
    "!decision <text> — 在本会诊房间记录一项决定 record a decision in this case room\n"
    "!case close — 归档本会诊（FHIR Bundle 与 PDF 存入电子病历）并将房间设为只读 "
    "archive this case (FHIR Bundle + PDF to the EMR) and make the room read-only"
)

USAGE_ACK = (
    "用法：!ack <呼叫编号>（呼叫通知中方括号内的编号，例如 !ack 3F9A1C） "
    "Usage: !ack <alert id>  (the ID in brackets on the page, e.g. !ack 3F9A1C)"
)
USAGE_SWAP = (
    "用法：!oncall swap <角色> <工号>（用您下一个该角色班次与对方的交换） "
    "Usage: !oncall swap <role> <staff number>  (your next shift of the role for theirs)"
)
USAGE_QUIET = (
    "用法：!quiet on|off（on：下班期间静音工作通知，危急警报仍会响铃；off：恢复） "
    "Usage: !quiet on|off  (on: silence work notifications while you are off duty, critical alerts still ring; "
    "off: back to normal)"
)
USAGE_COVER = "用法：!oncall cover <角色> until HH:MM [工号] Usage: !oncall cover <role> until HH:MM [staff number]"


def reply_ping(latency_ms: float | None, policy_digest: str) -> str:
    lag = f"{latency_ms:.0f} ms after you sent it" if latency_ms is not None else "now"
    lag_zh = f"发送后 {latency_ms:.0f} 毫秒" if latency_ms is not None else "当前"
    return (
        f"pong — CareMatrix 服务正常（{lag_zh}），策略 {policy_digest[:12]} 生效中。"
        f" CareMatrix is up ({lag}); policy {policy_digest[:12]} in force."
    )


def reply_unknown(name: str) -> str:
    return f"未知指令 '!{name}'。发送 !help 查看指令列表。 Unknown command '!{name}'. Send !help for the list."
