"""Locust user classes, one module per traffic kind; ``loadtests/locustfile.py`` exposes them."""
