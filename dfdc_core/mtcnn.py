"""MTCNN's three stages over a batch of uint8 frames, with facenet-pytorch's networks and weights.

The same cascade as `facenet_pytorch.models.utils.detect_face` (image pyramid → P-Net → NMS → R-Net on 24x24
crops → O-Net on 48x48 crops → "Min" NMS), with the resampling done by OpenCV on uint8 images instead of
`torch.nn.functional.interpolate(mode="area")`, which is slow on the CPU, and the networks run channels-last.
On 2 CPU cores this detects the same faces in about 60 % of facenet-pytorch's time (`bench/kernel_speed.py`).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms,
    batched_nms_numpy,
    bbreg,
    generateBoundingBox,
    pad,
    rerec,
)

PYRAMID_FACTOR = 0.709          # MTCNN's scale step between pyramid levels
NET_BATCH = 512                 # crops per R-Net / O-Net call


def pyramid_scales(height: int, width: int, min_face_size: int, factor: float = PYRAMID_FACTOR) -> list[float]:
    """Scales at which P-Net's 12-pixel window matches faces from `min_face_size` pixels up."""
    scale = 12.0 / min_face_size
    short_side = min(height, width) * scale
    scales = []
    while short_side >= 12:
        scales.append(scale)
        scale *= factor
        short_side *= factor
    return scales


def to_net_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 `(n, H, W, 3)` → float `(n, 3, H, W)` channels-last in MTCNN's [-1, 1] range, on `device`."""
    tensor = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return ((tensor - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)


def resize_all(images: list[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize each uint8 image to `size` = (width, height)."""
    return np.stack([cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images])


def run_net(net: torch.nn.Module, images: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Run R-Net or O-Net over `images` in batches; outputs concatenated."""
    outputs = [net(to_net_input(images[start:start + NET_BATCH], device))
               for start in range(0, len(images), NET_BATCH)]
    return tuple(torch.cat(parts, dim=0) for parts in zip(*outputs))


def crop_boxes(frames: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor,
               size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Crops of `boxes` clipped to the frame (as facenet-pytorch does) resized to `size`, and which boxes had
    any pixels inside the frame (the others get no crop)."""
    height, width = frames.shape[1:3]
    y, ey, x, ex = pad(boxes, width, height)
    inside = (ey > y - 1) & (ex > x - 1)
    inds = image_inds.cpu().numpy()
    crops = [cv2.resize(frames[inds[k], y[k] - 1:ey[k], x[k] - 1:ex[k]], (size, size), interpolation=cv2.INTER_AREA)
             for k in np.flatnonzero(inside)]
    empty = np.zeros((0, size, size, 3), dtype=np.uint8)
    return (np.stack(crops) if crops else empty), torch.from_numpy(inside).to(boxes.device)


def first_stage(frames: np.ndarray, pnet: torch.nn.Module, min_face_size: int, threshold: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over the image pyramid: candidate boxes `(k, 5)` (x1, y1, x2, y2, score) and their frame index."""
    height, width = frames.shape[1:3]
    all_boxes = [torch.zeros((0, 9), device=device)]
    all_inds = [torch.zeros(0, dtype=torch.long, device=device)]
    for scale in pyramid_scales(height, width, min_face_size):
        level = resize_all(frames, (int(width * scale + 1), int(height * scale + 1)))
        reg, probs = pnet(to_net_input(level, device))
        boxes, image_inds = generateBoundingBox(reg, probs[:, 1], scale, threshold)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.5)
        all_boxes.append(boxes[pick])
        all_inds.append(image_inds[pick])
    boxes, image_inds = torch.cat(all_boxes), torch.cat(all_inds)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    refined = torch.stack([boxes[:, 0] + boxes[:, 5] * widths, boxes[:, 1] + boxes[:, 6] * heights,
                           boxes[:, 2] + boxes[:, 7] * widths, boxes[:, 3] + boxes[:, 8] * heights,
                           boxes[:, 4]], dim=1)
    return rerec(refined), image_inds


def net_outputs(frames: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor, net: torch.nn.Module,
                size: int, threshold: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """R-Net (size 24) or O-Net (size 48) on crops of `boxes`: the boxes it keeps (x1, y1, x2, y2, score), their
    frame index, their box regression and (O-Net) their landmark outputs."""
    crops, inside = crop_boxes(frames, boxes, image_inds, size)
    boxes, image_inds = boxes[inside], image_inds[inside]
    if not len(boxes):
        return boxes, image_inds, boxes[:, :4], boxes[:, :0]
    outputs = run_net(net, crops, device)
    regression, score = outputs[0], outputs[-1][:, 1]
    keep = score > threshold
    boxes = torch.cat((boxes[keep, :4], score[keep].unsqueeze(1)), dim=1)
    points = outputs[1][keep] if len(outputs) == 3 else boxes[:, :0]
    return boxes, image_inds[keep], regression[keep], points


def second_stage(frames: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor, rnet: torch.nn.Module,
                 threshold: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """R-Net on 24x24 crops: kept boxes, regressed and squared, and their frame index."""
    boxes, image_inds, regression, _ = net_outputs(frames, boxes, image_inds, rnet, 24, threshold, device)
    if not len(boxes):
        return boxes, image_inds
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    return rerec(bbreg(boxes[pick], regression[pick])), image_inds[pick]


def third_stage(frames: np.ndarray, boxes: torch.Tensor, image_inds: torch.Tensor, onet: torch.nn.Module,
                threshold: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """O-Net on 48x48 crops: final boxes, their frame index and five landmarks `(k, 5, 2)` (eyes, nose, mouth
    corners) in frame pixels, placed as facenet-pytorch places them (relative to the box before regression)."""
    boxes, image_inds, regression, points = net_outputs(frames, boxes, image_inds, onet, 48, threshold, device)
    if not len(boxes):
        return boxes, image_inds, torch.zeros((0, 5, 2), device=boxes.device)
    widths, heights = boxes[:, 2:3] - boxes[:, 0:1] + 1, boxes[:, 3:4] - boxes[:, 1:2] + 1
    landmarks = torch.stack((widths * points[:, :5] + boxes[:, 0:1] - 1,
                             heights * points[:, 5:10] + boxes[:, 1:2] - 1), dim=2)
    boxes = bbreg(boxes, regression)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
    return boxes[pick], image_inds[pick], landmarks[pick]


@torch.inference_mode()
def detect_faces(frames: np.ndarray, nets: tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module],
                 min_face_size: int, thresholds: tuple[float, float, float],
                 device: torch.device) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Faces in RGB uint8 frames `(n, H, W, 3)`: per frame `(boxes (k, 4) x1 y1 x2 y2, scores (k,),
    landmarks (k, 5, 2))`."""
    pnet, rnet, onet = nets
    frames = np.ascontiguousarray(frames)
    boxes, image_inds = first_stage(frames, pnet, min_face_size, thresholds[0], device)
    landmarks = torch.zeros((0, 5, 2), device=device)
    if len(boxes):
        boxes, image_inds = second_stage(frames, boxes, image_inds, rnet, thresholds[1], device)
    if len(boxes):
        boxes, image_inds, landmarks = third_stage(frames, boxes, image_inds, onet, thresholds[2], device)
    boxes, image_inds = boxes.float().cpu().numpy(), image_inds.cpu().numpy()
    landmarks = landmarks.float().cpu().numpy()
    return [(boxes[image_inds == frame, :4], boxes[image_inds == frame, 4], landmarks[image_inds == frame])
            for frame in range(len(frames))]
