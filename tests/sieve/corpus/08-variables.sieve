require ["variables", "fileinto"];
if header :matches "subject" "[*] *" {
  set :lower :upperfirst "list" "${1}";
  fileinto "Lists/${list}";
}
set "n" "x";
if string :is :comparator "i;octet" "${n}" "X" { discard; }
