"""Model wing: Keras 3 U-Net builders (backend-agnostic: keras layers and keras.ops only)."""
