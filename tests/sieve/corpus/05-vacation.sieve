require "vacation";
vacation :days 3 :subject "Away" :addresses ["bob@home.test", "bob+work@home.test"] "I am away this week.";
