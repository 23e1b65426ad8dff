// Build, test, benchmark and package pve-dirbackup. Run through ./build.sh <Target>.
var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var root = MakeAbsolute(Directory("."));
var buildDir = root.Combine(".build");

// Everything the project and its tests use on the system side (DESIGN.md, MACHINE-NOTES.md).
var aptPackages = new[] {
    "perl", "libjson-perl", "libjson-xs-perl", "systemd", "util-linux",
    "qemu-utils", "qemu-system-common", "libnbd0", "libnbd-bin",
    "squashfs-tools", "squashfuse", "fuse3", "uidmap", "attr", "acl", "cstream", "tar", "e2fsprogs", "xfsprogs", "btrfs-progs", "mount", "libcap2-bin",
};

int Run(string tool, string args, string workingDirectory = null)
{
    var settings = new ProcessSettings { Arguments = args, WorkingDirectory = workingDirectory ?? root.FullPath };
    return StartProcess(tool, settings);
}

void MustRun(string tool, string args, string workingDirectory = null)
{
    var code = Run(tool, args, workingDirectory);
    if (code != 0)
        throw new Exception($"{tool} {args} failed with exit code {code}");
}

Task("Setup")
    .Description("Install the Debian packages the project needs, when they are missing; restore NuGet packages")
    .Does(() =>
{
    var missing = aptPackages.Where(p => Run("sh", $"-c \"dpkg-query -W -f='${{Status}}' {p} 2>/dev/null | grep -q 'ok installed'\"") != 0).ToList();
    if (missing.Count > 0)
    {
        Information($"installing: {string.Join(" ", missing)}");
        var sudo = Run("sh", "-c \"[ $(id -u) -eq 0 ]\"") == 0 ? "" : "sudo ";
        MustRun("sh", $"-c \"{sudo}apt-get update -qq && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq --no-install-recommends {string.Join(" ", missing)}\"");
    }
    MustRun("dotnet", "restore pve-dirbackup.slnx");
});

Task("Build")
    .IsDependentOn("Setup")
    .Does(() =>
{
    MustRun("dotnet", $"build pve-dirbackup.slnx -c {configuration} --no-restore");
    foreach (var module in GetFiles("perl-shim/**/*.pm"))
        MustRun("perl", $"-T -c -I perl-shim -I tests/perl/lib {module.FullPath}");
});

Task("Test")
    .Description("Every test: xunit (unit, integration over a real socket, Perl end to end) and the Perl unit tests under prove -T")
    .IsDependentOn("Build")
    .Does(() =>
{
    MustRun("prove", "-I perl-shim -I tests/perl/lib -r tests/perl/unit");
    MustRun("dotnet", $"test pve-dirbackup.slnx -c {configuration} --no-build --logger \"console;verbosity=normal\"");
});

Task("Bench")
    .Description("Benchmarks: prints figures and ratios against reference runs made on this machine in the same run")
    .IsDependentOn("Build")
    .Does(() =>
{
    // The benchmarks run the daemon as the package ships it: self-contained and precompiled.
    var daemon = buildDir.Combine("bench-daemon");
    MustRun("dotnet", $"publish daemon -c {configuration} -r linux-x64 --self-contained -p:PublishReadyToRun=true -o {daemon.FullPath}");
    MustRun("dotnet", $"run --project tests/DirBackup.Bench -c {configuration} --no-build -- {root.FullPath} all {daemon.CombineWithFilePath("dirbackupd").FullPath}");
});

Task("Run")
    .Description("The main job: three backups of a generated VM disk (full, incremental, incremental with keep-last=2, which merges the first into the second) through the Perl shim and the daemon, listed, checked and restored")
    .IsDependentOn("Build")
    .Does(() =>
{
    MustRun("tools/demo", $"daemon/bin/{configuration}/net10.0/dirbackupd.dll {buildDir.Combine("run").FullPath}");
});

Task("Package")
    .Description("Build .build/pve-dirbackup_<version>_amd64.deb: self-contained daemon, Perl plugin, systemd units")
    .IsDependentOn("Test")
    .Does(() =>
{
    var version = XmlPeek("daemon/DirBackup.Daemon.csproj", "/Project/PropertyGroup/Version");
    var pkg = buildDir.Combine("pkg");
    CleanDirectory(pkg);
    // Precompiled (ReadyToRun): the daemon runs without tiered compilation, and this keeps its start-up where tiering had it.
    MustRun("dotnet", $"publish daemon -c {configuration} -r linux-x64 --self-contained -p:PublishReadyToRun=true -o {pkg.Combine("usr/lib/pve-dirbackup").FullPath}");
    CopyDirectory("perl-shim", pkg.Combine("usr/share/perl5"));
    EnsureDirectoryExists(pkg.Combine("lib/systemd/system"));
    CopyFiles(new[] { "debian/dirbackupd.service", "debian/dirbackupd.socket" }.Select(f => new FilePath(f)), pkg.Combine("lib/systemd/system"));
    EnsureDirectoryExists(pkg.Combine("usr/share/doc/pve-dirbackup"));
    CopyFile("README.md", pkg.CombineWithFilePath("usr/share/doc/pve-dirbackup/README.md"));
    EnsureDirectoryExists(pkg.Combine("DEBIAN"));
    System.IO.File.WriteAllText(pkg.CombineWithFilePath("DEBIAN/control").FullPath, System.IO.File.ReadAllText("debian/control").Replace("@VERSION@", version));
    CopyFiles(new[] { "debian/postinst", "debian/prerm" }.Select(f => new FilePath(f)), pkg.Combine("DEBIAN"));
    MustRun("chmod", $"755 {pkg.Combine("DEBIAN").FullPath}/postinst {pkg.Combine("DEBIAN").FullPath}/prerm");
    MustRun("dpkg-deb", $"--root-owner-group --build {pkg.FullPath} {buildDir.CombineWithFilePath($"pve-dirbackup_{version}_amd64.deb").FullPath}");
});

RunTarget(target);
