"""The anesthesiologist invitation platform: everything the Lambda functions run."""
