require "reject";
if header :matches "subject" "ALERT*full*" {
  reject "Alerts go to the pager, not to me.";
}
