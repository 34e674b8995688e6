"""Task heads after published code, each a switch on its task's config (`<task>.head`)."""
