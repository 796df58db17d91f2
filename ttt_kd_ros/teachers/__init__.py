"""The frozen 2D teachers and everything about their features.

``teacher`` (the Teacher interface: feature maps, sampling, the one image
normalisation), ``weights`` (DINOv2 weights read from disk, the tiny random
ViT), ``dense`` (the dense stand-in), ``oracle`` (the offline bracket's upper
bound), ``probe`` (teacher quality as KD uses it), ``feature_cache`` (features
stored once per data set) and ``resolve`` (a teacher spec -> a Teacher: the one
place that reads one).
"""
