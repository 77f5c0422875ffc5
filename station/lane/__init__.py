"""The lane at run time: the pipeline's stage threads, captures, frame gate, vehicle loop, counts."""
