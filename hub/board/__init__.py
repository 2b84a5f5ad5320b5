"""The progress board at /board: server-rendered pages for a supplier's planners and the
plant's coordinator, live on the supplier's feed (docs/board.md).

What a page shows comes from the supplier API's own functions and redaction
(hub/board/source.py); this package adds only sessions, pages and their assets.
"""
