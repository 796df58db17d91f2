"""The message layer: ROS messages <-> numpy, with no rclpy (data/, replay/ and the node all use it).

Decoders are duck-typed on message attributes, so rclpy messages, messages
deserialised by ``rosbags`` and hand-built objects read the same. Encoders
import ``sensor_msgs`` inside the function. Modules, by what they hold:
``stamps`` (header stamps -> integer ns, once), ``buffer`` (a message's bytes
as numpy), ``pointcloud2`` (structured-dtype decoding and encoding),
``cloud`` (the policy over decoded points: which to keep, intensity and
colour scaling, the point cap), ``image``, ``camera_info``, ``typestore``
(the one rosbags typestore), ``tf_message`` (TFMessage CDR), ``scan_messages``
(synchronized messages -> Scan and Prediction -> labeled PointCloud2).
"""
