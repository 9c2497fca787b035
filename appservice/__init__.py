"""The CareMatrix application service: the hospital's bot and, later, role addresses and
clinical-system bridges. Protocol adapters live in ``bridges/``; routing and Matrix I/O here."""
