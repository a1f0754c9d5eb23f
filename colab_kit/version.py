"""The package's version: setup.py reads it from here, exported models record it."""

VERSION = "0.1.0"
