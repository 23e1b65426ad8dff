#!/usr/bin/perl
# Times the shim against the seed's in-process way, in one process, and prints one JSON object.
# Usage: DIRBACKUP_SOCKET=... perl -I perl-shim -I tests/perl/lib tests/perl/bench/shim-bench.pl <storage-path> <runs> <calls>
use strict;
use warnings;

use JSON;
use Time::HiRes qw(time);
use PVE::Storage::Custom::DirBackupPlugin;

my ($path, $runs, $calls) = @ARGV;
$runs //= 5;
$calls //= 1000;
my $storeid = 'bench';
my $scfg = { type => 'dirbackup', path => $path, content => { backup => 1 } };

# The seed's way (DirectoryExample's list_volumes): glob the guest directories, stat every file.
sub seed_list_volumes {
    my ($dir) = @_;
    my $res = [];
    for my $backup (glob("$dir/[0-9]*/{qemu,lxc}-[0-9]*")) {
        next if $backup !~ m!/(\d+)/(qemu|lxc)-(\d+)$!;
        my ($vmid, $type, $ctime) = ($1, $2, $3);
        my $size = 0;
        for my $file (glob("$backup/*")) {
            my @st = stat($file);
            $size += $st[7] if @st;
        }
        push @$res, { volid => "$storeid:backup/$vmid/$type-$ctime", vmid => $vmid, format => 'directory',
            ctime => $ctime, size => $size, subtype => $type, content => 'backup' };
    }
    return $res;
}

sub median {
    my @v = sort { $a <=> $b } @_;
    return $v[int(@v / 2)];
}

sub timed {
    my ($code) = @_;
    my $t0 = time();
    my $res = $code->();
    return (time() - $t0, $res);
}

my (@shim, @seed, $shim_count, $seed_count);
for (1 .. $runs) {
    my ($t, $r) = timed(sub { PVE::Storage::Custom::DirBackupPlugin->list_volumes($storeid, $scfg, undef, ['backup']) });
    push @shim, $t;
    $shim_count = scalar(@$r);
    ($t, $r) = timed(sub { seed_list_volumes($path) });
    push @seed, $t;
    $seed_count = scalar(@$r);
}

my $volname = (PVE::Storage::Custom::DirBackupPlugin->list_volumes($storeid, $scfg, undef, ['backup'])->[0]->{volid} =~ s/^\Q$storeid\E://r);
my @rtt;
for (1 .. $calls) {
    my $t0 = time();
    PVE::Storage::Custom::DirBackupPlugin->get_volume_attribute($scfg, $storeid, $volname, 'notes');
    push @rtt, time() - $t0;
}

print encode_json({
    'list-shim-s' => median(@shim), 'list-seed-s' => median(@seed),
    'list-shim-count' => $shim_count, 'list-seed-count' => $seed_count,
    'rtt-median-s' => median(@rtt), 'rtt-p99-s' => (sort { $a <=> $b } @rtt)[int(@rtt * 0.99)],
}), "\n";
