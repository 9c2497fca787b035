"""MSH-18 character set names (HL7 table 0211) to Python codecs.

Only ASCII-compatible encodings are accepted: the parser finds MSH-18 by reading the MSH
segment's bytes before it knows the charset, which works only when delimiters and digits
are plain ASCII bytes. UTF-16/32 (``UNICODE UTF-16``) and ISO 2022 based Japanese sets are
therefore refused, as is ``CNS 11643-1992``, for which Python has no codec.
"""

from __future__ import annotations

import re

_CODECS: dict[str, str] = {
    "": "utf-8",  # v2.x default is ASCII; UTF-8 is its superset and what senders really mean
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "GB 18030-2000": "gb18030",
    "GB18030": "gb18030",
    "GB 18030": "gb18030",
    "GB18030-2000": "gb18030",
    "GB 18030-2005": "gb18030",
    # Not table 0211 names, but sent by Chinese HIS vendors; GB18030 decodes both.
    "GB2312": "gb18030",
    "GBK": "gb18030",
    "BIG-5": "big5",
    "BIG5": "big5",
    "KS X 1001": "euc_kr",
}
_ISO_8859 = re.compile(r"8859/([2-9])")

# Codecs whose multi-byte sequences may contain ASCII bytes such as '|' or '^', so a field
# split of undecoded bytes can go wrong and must be checked after decoding.
ASCII_UNSAFE = ("gb18030", "big5")


def codec_for(charset: str) -> str | None:
    """The codec for an MSH-18 value, or None when we cannot decode that character set."""
    name = " ".join(charset.split()).upper()
    if name in _CODECS:
        return _CODECS[name]
    match = _ISO_8859.fullmatch(name)
    return f"iso8859-{match.group(1)}" if match else None
