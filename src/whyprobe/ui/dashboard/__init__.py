"""`whyprobe dashboard`: a read-only local web page (server.py) over the JSON documents of data.py."""
