"""Pictures for people: annotated frames and videos (boxes, landmarks, labels) and
benchmark plots, drawn with OpenCV (already a dependency; nothing heavier)."""
