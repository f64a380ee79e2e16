"""Stage 1: train the teacher (ResNet50 by default) into RUN/teacher/."""
