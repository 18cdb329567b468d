require "fileinto";
if anyof (not exists "message-id", header :contains ["subject", "x-none"] ["digest", "disk"]) {
  fileinto "Robots";
} elsif allof (address :localpart :is ["to", "cc"] "team", size :under 2K) {
  fileinto "Team";
} else {
  discard;
}
