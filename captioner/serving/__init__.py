"""Captioning with a trained bundle: the Python API, the web server and page, attention figures."""
