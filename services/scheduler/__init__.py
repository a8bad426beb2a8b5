"""The scheduler: places model instances and starts, stops and watches them through a runtime driver."""
