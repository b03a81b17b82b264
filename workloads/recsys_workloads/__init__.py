"""What runs inside the pods that recsys-operator creates: the offline and online loop halves."""
