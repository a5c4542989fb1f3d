"""Readers of the published pose and depth sets the paper's Tables 7–8 use: Co3Dv2 (`co3d`),
RealEstate10K (`re10k`) and the exported NYUv2 labelled set (`nyuv2`).

Every reader returns `GeometryClip`s in one convention, whatever the dataset's own: OpenCV
cameras (x right, y down, z forward), camera-to-world `[4,4]` poses and `[3,3]` pixel
intrinsics of the image as stored, with pixel centres at integer coordinates (as
`vidllm.data.frames`). Bad or missing files raise `DataError(path, problem)`.
"""

from vidllm.data.geometry_sets.clips import GeometryClip, image_size, read_depth_png_mm, read_rgb, sample_clip_frames

__all__ = ["GeometryClip", "image_size", "read_depth_png_mm", "read_rgb", "sample_clip_frames"]
