"""What `make bench` measures (scripts/bench.py), against real peers in the same run.

May import everything in caffecam.
"""
