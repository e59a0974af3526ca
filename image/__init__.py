"""The image layer: firmware tags, test images and signed images.

It sits between the RPC layer and the two emulated sides: the NCP reads a shipment's tag, the
primary reads the tag of what it boots and checks signatures, and neither owns the format.
"""
