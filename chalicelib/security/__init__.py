"""Keys, encryption, hashing and tokens: the parts that keep people's data safe."""
