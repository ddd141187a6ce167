"""Development-only tools: the local chain (anvil), the token's deploy and mint, demo data.

A separate Django app (``autopay.devtools``), installed while ``AUTOPAY_DEV_TOOLS`` is true (the
default), so that a production deployment can leave it out (``AUTOPAY_DEV_TOOLS=false``).
"""
