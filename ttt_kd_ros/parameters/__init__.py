"""The node's parameters without rclpy: ``table`` (names, defaults, checks as data) and
``segmenter_config`` (parameters -> SegmenterConfig -> Segmenter, the one mapping the node and the tools share).
"""
