# broken.py: a syntax error is refused before anything is built or uploaded.
def handle(subject, payload):
    return "hello " +
