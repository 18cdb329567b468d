if header :is "message-id" "<m1@far.test>" { discard; stop; }
redirect "other@far.test";
