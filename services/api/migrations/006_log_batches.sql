-- Log messages now carry batches of lines: a line's `seq` is its message's stream sequence
-- x 65536 (pier.events.LOG_BATCH_MAX) + its place in the message. Lines folded before keep their order.
UPDATE logs SET seq = seq * 65536;
