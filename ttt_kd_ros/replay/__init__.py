"""Bags in and out: write Scans as a rosbag2, replay a bag through the live node or the Segmenter, report.

Kept apart from ``tools/`` so the console commands stay thin argument parsers
and the pieces (bag writer, raw message source, node driver, report, plots)
can be tested and reused (the demo composes them).
"""
