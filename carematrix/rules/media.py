"""Who may open a file that was shared in a protected room, and in which form.

A file posted in a watermark room is remembered with where it was posted (its postings);
every download of it passes this decision. An allowed verdict carries the rule that says
how the file is served: the original to the hospital's own service, a non-image file as it
is, an image marked for its viewer. Every one of those downloads is on record first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from carematrix.rules.verdict import ALLOW, Verdict


class Posting(Protocol):
    """Where a protected file was posted, as the gate remembers it."""

    @property
    def kind(self) -> str:
        """``image`` (served watermarked) or ``file`` (served per ``other_files``)."""
        ...

    @property
    def other_files(self) -> str:
        """The class's ``other_files`` when it was posted: ``audited`` or ``block``."""
        ...


OTHER_SERVER = Verdict(
    False,
    "protection.media_federation",
    "受保护房间中共享的文件不会发往其他服务器。 Files shared in protected rooms never leave for another server.",
)
SIGN_IN = Verdict(
    False,
    "protection.media_signed_in",
    "受保护的临床文件只提供给已登录的成员（需认证的媒体接口）。"
    " Protected clinical files are only served to signed-in members (authenticated media API).",
)
MEMBERS_ONLY = Verdict(
    False,
    "protection.media_members",
    "此文件共享于受保护房间，只有该房间的成员可以打开。 This file was shared in a protected room; only its members can open it.",
)
FILES_BLOCKED = Verdict(
    False,
    "protection.other_files",
    "根据医院规定，此房间中除图片外的文件不能下载。 Files other than images cannot be downloaded from this room (hospital policy).",
)
ARCHIVE = Verdict(
    True,
    "protection.media_archive",
    "The hospital's own service archives protected rooms into the patient record and gets "
    "the original.",
)
PLAIN_FILE = Verdict(
    True,
    "protection.media_file",
    "A member gets a file other than an image as it was posted; the download is on record.",
)
WATERMARK = Verdict(
    True,
    "protection.media_watermark",
    "A member gets the image marked with who they are and when; the download is on record.",
)


def decide_media_access(
    postings: Sequence[Posting],
    *,
    other_server: bool,
    signed_in: bool,
    is_system: bool,
    is_member: bool,
) -> Verdict:
    """May this request have the file, and in which form?

    ``postings`` are the protected rooms the file was shared in (none: not a protected file,
    served as Synapse would). ``other_server`` is a federation request. ``is_member`` is
    whether the signed-in user is joined to any of the posting rooms; it is not needed for
    the service's own accounts (``is_system``)."""
    if not postings:
        return ALLOW
    if other_server:
        return OTHER_SERVER
    if not signed_in:
        return SIGN_IN
    if is_system:
        return ARCHIVE
    if not is_member:
        return MEMBERS_ONLY
    if any(p.kind == "image" for p in postings):
        return WATERMARK
    if any(p.other_files == "block" for p in postings):
        return FILES_BLOCKED
    return PLAIN_FILE
