"""The account a /login names, as the audit records a failed attempt."""

from synapse_modules.audit_module import login_identity


def test_login_identity_qualifies_localparts():
    assert login_identity({"identifier": {"type": "m.id.user", "user": "N3001"}}, "renhe.example") == "@n3001:renhe.example"
    assert login_identity({"user": "@d1001:renhe.example"}, "renhe.example") == "@d1001:renhe.example"
    assert login_identity({"identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "a@b.cn"}}, "x") == "a@b.cn"
    assert login_identity({}, "x") is None
