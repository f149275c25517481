"""What a job does to pictures: the reference, joining windows, the finish (tone, poles, the plate) and
the delivery."""
