"""`eaas top`: a terminal view of a running deployment (cli.py; the frame is view.py + render.py, pure)."""
